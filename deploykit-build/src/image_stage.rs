//! [`ImageStage`]: a package stage that puts earlier outputs into an OCI image, as ko and jib
//! do: no container daemon, no Dockerfile; one reproducible layer per mapping, on a base image
//! pulled by digest (or on nothing), written to an OCI layout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use typed_builder::TypedBuilder;

use deploykit_core::build::{
    Artifact, ArtifactKind, BuildContext, BuildStage, Fingerprint, StageKind,
};
use deploykit_core::{Digest, Error, Result};
use deploykit_image::oci::{self, Manifest, Platform};
use deploykit_image::{Image, Layer, Layout, Reference, Registry};

use crate::files::{self, check_relative};

/// Packages files of the working directory into an OCI image.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> deploykit_core::Result<()> {
/// use std::sync::Arc;
/// use deploykit_build::{ImageStage, Pipeline};
/// use deploykit_core::build::{ArtifactKind, BuildContext};
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::create_dir(dir.path().join("dist")).unwrap();
/// std::fs::write(dir.path().join("dist/index.html"), "<h1>hi</h1>").unwrap();
/// let package = ImageStage::builder()
///     .image_name("web")
///     .layout(".deploykit/images")
///     .files(vec![("/srv/www".into(), "dist".into())])
///     .entrypoint(vec!["/srv/server".into()])
///     .build();
/// let build = Pipeline::new(vec![Arc::new(package)])?.run(&BuildContext::new(dir.path())).await?;
/// let image = build.deployable().unwrap();
/// assert_eq!(image.kind, ArtifactKind::Image);
/// assert!(image.digest.as_str().starts_with("sha256:"));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, TypedBuilder)]
#[non_exhaustive]
pub struct ImageStage {
    /// The stage's name.
    #[builder(default = "package".to_string(), setter(into))]
    pub name: String,
    /// The image's name in the layout (the service's).
    #[builder(setter(into))]
    pub image_name: String,
    /// The OCI layout directory (relative to the working directory, or absolute).
    #[builder(setter(into))]
    pub layout: PathBuf,
    /// The base image, pinned by digest; none: the image holds only its own layers.
    #[builder(default, setter(strip_option))]
    pub base: Option<Reference>,
    /// What goes in: a path in the image and a file or directory of the working directory,
    /// one layer each, in order.
    pub files: Vec<(String, PathBuf)>,
    /// The program and its first arguments.
    #[builder(default)]
    pub entrypoint: Vec<String>,
    /// Arguments after the entrypoint.
    #[builder(default)]
    pub cmd: Vec<String>,
    /// Environment variables.
    #[builder(default)]
    pub env: BTreeMap<String, String>,
    /// The working directory in the image.
    #[builder(default, setter(strip_option, into))]
    pub workdir: Option<String>,
    /// The user (`65532`, `65532:65532`).
    #[builder(default, setter(strip_option, into))]
    pub user: Option<String>,
    /// Ports the process listens on.
    #[builder(default)]
    pub ports: Vec<u16>,
    /// Labels.
    #[builder(default)]
    pub labels: BTreeMap<String, String>,
    /// The registry client the base is pulled with (default: [`Registry::from_env`]).
    #[builder(default = Arc::new(Registry::from_env()))]
    pub registry: Arc<Registry>,
}

impl ImageStage {
    fn field(&self, what: &str) -> String {
        format!("build.{}.{what}", self.name)
    }

    fn layout(&self, ctx: &BuildContext) -> PathBuf {
        ctx.workdir.join(&self.layout)
    }

    /// Checks the settings: a base pinned by digest, something to put in, paths that stay
    /// inside the working directory and are paths in the image.
    pub fn check(&self) -> Result<()> {
        if let Some(base) = &self.base
            && base.digest().is_none()
        {
            return Err(Error::invalid(
                self.field("base"),
                format!(
                    "{base} is not pinned by digest: a tag can move and the image would not \
                     reproduce; give it as {}@sha256:… (`skopeo inspect docker://{base}` \
                     prints the digest)",
                    base.name()
                ),
            ));
        }
        if self.files.is_empty() {
            return Err(Error::invalid(
                self.field("files"),
                "an image needs at least one file or directory to put in it",
            ));
        }
        for (i, (at, local)) in self.files.iter().enumerate() {
            check_relative(&self.field(&format!("files[{i}]")), local)?;
            Layer::new()
                .add_dir(at, 0o755)
                .map_err(|e| Error::invalid(self.field(&format!("files[{i}]")), e.to_string()))?;
        }
        Ok(())
    }

    fn settings(&self) -> String {
        serde_json::json!({
            "entrypoint": self.entrypoint,
            "cmd": self.cmd,
            "env": self.env,
            "workdir": self.workdir,
            "user": self.user,
            "ports": self.ports,
            "labels": self.labels,
            "files": self.files,
            "platform": Platform::host(),
        })
        .to_string()
    }
}

#[async_trait]
impl BuildStage for ImageStage {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> StageKind {
        StageKind::Package
    }

    async fn validate(&self, _ctx: &BuildContext) -> Result<()> {
        self.check()
    }

    async fn fingerprint(&self, ctx: &BuildContext) -> Result<Option<Fingerprint>> {
        let mut fp = Fingerprint::default();
        fp.insert("settings", self.settings());
        if let Some(base) = &self.base {
            fp.insert("base", base.to_string());
        }
        for (i, (at, local)) in self.files.iter().enumerate() {
            let found = files::walk(&ctx.workdir, local).map_err(|e| {
                Error::invalid(
                    self.field(&format!("files[{i}]")),
                    format!("{}: {e}", local.display()),
                )
            })?;
            for f in found {
                let mode = if f.executable { " (executable)" } else { "" };
                fp.insert(
                    format!("file {at} <- {}", f.path),
                    format!("{}{mode}", f.digest),
                );
            }
        }
        Ok(Some(fp))
    }

    async fn reusable(&self, ctx: &BuildContext, artifacts: &[Artifact]) -> Result<bool> {
        let Ok(layout) = Layout::open(self.layout(ctx)) else {
            return Ok(false);
        };
        for artifact in artifacts.iter().filter(|a| a.kind == ArtifactKind::Image) {
            let digest = artifact.digest.as_str();
            let Ok(bytes) = layout.read_blob(digest) else {
                return Ok(false);
            };
            let manifest: Manifest = oci::parse(digest, &bytes)?;
            if !std::iter::once(&manifest.config)
                .chain(&manifest.layers)
                .all(|b| layout.has_blob(&b.digest))
            {
                return Ok(false);
            }
            layout.tag(
                &self.image_name,
                &oci::Descriptor::of(oci::MANIFEST, &bytes),
            )?;
        }
        Ok(true)
    }

    async fn run(&self, ctx: &BuildContext) -> Result<Vec<Artifact>> {
        let layout = Layout::open_or_create(self.layout(ctx))?;
        let mut image = match &self.base {
            Some(base) => Image::on(self.registry.pull(base, &layout, &Platform::host()).await?),
            None => Image::scratch(),
        };
        for (i, (at, local)) in self.files.iter().enumerate() {
            let source = ctx.workdir.join(local);
            let mut layer = Layer::new();
            let added = if source.is_dir() {
                layer.add_tree(at, &source)
            } else {
                let executable = std::fs::metadata(&source)
                    .map(|m| files::is_executable(&m))
                    .map_err(|e| {
                        Error::invalid(
                            self.field(&format!("files[{i}]")),
                            format!("{}: {e}", local.display()),
                        )
                    })?;
                layer.add_file(at, &source, if executable { 0o755 } else { 0o644 })
            };
            added.map_err(|e| Error::invalid(self.field(&format!("files[{i}]")), e.to_string()))?;
            image = image.layer(layer);
        }
        if !self.entrypoint.is_empty() {
            image = image.entrypoint(self.entrypoint.clone());
        }
        if !self.cmd.is_empty() {
            image = image.cmd(self.cmd.clone());
        }
        for (k, v) in &self.env {
            image = image.env(k, v);
        }
        if let Some(dir) = &self.workdir {
            image = image.workdir(dir);
        }
        if let Some(user) = &self.user {
            image = image.user(user);
        }
        for port in &self.ports {
            image = image.port(*port);
        }
        for (k, v) in &self.labels {
            image = image.label(k, v);
        }
        let layout_dir = layout.dir().to_path_buf();
        let built = tokio::task::spawn_blocking({
            let name = self.image_name.clone();
            move || image.build(&layout, &name)
        })
        .await
        .map_err(|e| Error::backend(format!("build stage {}", self.name), e.to_string()))??;
        let digest = Digest::parse(&built.descriptor.digest)?;
        Ok(vec![
            Artifact::in_file(
                self.image_name.clone(),
                layout_dir,
                digest,
                built.descriptor.size,
            )
            .of_kind(ArtifactKind::Image),
        ])
    }

    async fn cleanup(&self, _ctx: &BuildContext) -> Result<()> {
        Ok(())
    }
}

/// The descriptor of the image `artifact` (an [`ArtifactKind::Image`] from an [`ImageStage`])
/// in its layout: what [`Registry::push`] takes.
pub fn image_descriptor(artifact: &Artifact) -> Result<(Layout, oci::Descriptor)> {
    let dir: &Path = artifact
        .path
        .as_deref()
        .ok_or_else(|| Error::invalid("artifact", format!("{} has no layout", artifact.name)))?;
    let layout = Layout::open(dir)?;
    let bytes = layout.read_blob(artifact.digest.as_str())?;
    Ok((layout, oci::Descriptor::of(oci::MANIFEST, &bytes)))
}

/// The base image of `build`'s image stage, if it had one (as its fingerprint records it):
/// where a push can mount the base's layers from instead of uploading them.
pub fn base_of(build: &crate::pipeline::Build) -> Option<Reference> {
    build
        .stages
        .iter()
        .rev()
        .filter_map(|s| s.fingerprint.as_ref())
        .find_map(|f| f.parts().get("base"))
        .and_then(|b| b.parse().ok())
}
