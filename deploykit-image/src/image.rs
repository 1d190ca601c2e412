//! Assembling an image: an optional base (pulled by digest), layers of build outputs, and what
//! runs; written to an OCI layout as configuration, layers and manifest. The same inputs give
//! the same manifest digest, on any machine, at any time.
//!
//! ```
//! use deploykit_image::{Image, Layer, Layout};
//! let dir = tempfile::tempdir().unwrap();
//! let layout = Layout::open_or_create(dir.path())?;
//! let mut app = Layer::new();
//! app.add_bytes("srv/index.html", b"<h1>hello</h1>".to_vec(), 0o644)?;
//! let built = Image::scratch()
//!     .layer(app)
//!     .entrypoint(["/srv/server"])
//!     .port(8080)
//!     .build(&layout, "web:v1")?;
//! assert!(built.descriptor.digest.starts_with("sha256:"));
//! assert_eq!(layout.tagged("web:v1")?.digest, built.descriptor.digest);
//! # Ok::<(), deploykit_core::Error>(())
//! ```

use std::collections::BTreeMap;

use deploykit_core::Result;

use crate::layer::{Layer, LayerInfo};
use crate::layout::Layout;
use crate::oci::{self, Descriptor, ImageConfig, Manifest, Platform};
use crate::registry::Pulled;

/// An image being assembled.
#[derive(Clone, Debug)]
pub struct Image {
    base: Option<(Manifest, ImageConfig)>,
    layers: Vec<Layer>,
    platform: Platform,
    created: String,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Vec<(String, String)>,
    workdir: Option<String>,
    user: Option<String>,
    ports: Vec<u16>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

/// An image written to a layout.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Built {
    /// The manifest's descriptor: its digest is the image's identity.
    pub descriptor: Descriptor,
    /// The manifest.
    pub manifest: Manifest,
    /// The configuration.
    pub config: ImageConfig,
    /// The layers deploykit wrote (not the base's).
    pub layers: Vec<LayerInfo>,
}

impl Image {
    /// An image of nothing but its own layers, for this machine's platform.
    pub fn scratch() -> Self {
        Image {
            base: None,
            layers: Vec::new(),
            platform: Platform::host(),
            created: "1970-01-01T00:00:00Z".to_string(),
            entrypoint: None,
            cmd: None,
            env: Vec::new(),
            workdir: None,
            user: None,
            ports: Vec::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }

    /// An image on top of `base` (pulled into the same layout): its layers first, and its
    /// configuration (environment, entrypoint, user, ...) unless this image sets them.
    pub fn on(base: Pulled) -> Self {
        let platform = Platform::new(base.config.os.clone(), base.config.architecture.clone());
        Image {
            base: Some((base.manifest, base.config)),
            platform,
            ..Image::scratch()
        }
    }

    /// Adds a layer (applied after the base and the layers added before).
    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }

    /// The program and its first arguments.
    pub fn entrypoint<S: Into<String>>(mut self, argv: impl IntoIterator<Item = S>) -> Self {
        self.entrypoint = Some(argv.into_iter().map(Into::into).collect());
        self
    }

    /// Arguments after the entrypoint.
    pub fn cmd<S: Into<String>>(mut self, argv: impl IntoIterator<Item = S>) -> Self {
        self.cmd = Some(argv.into_iter().map(Into::into).collect());
        self
    }

    /// Sets `key` in the environment (replacing the base's value).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The working directory.
    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.workdir = Some(dir.into());
        self
    }

    /// The user the process runs as (`65532`, `65532:65532`, `nobody`).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// A TCP port the process listens on.
    pub fn port(mut self, port: u16) -> Self {
        self.ports.push(port);
        self
    }

    /// A label in the configuration (`org.opencontainers.image.source`, ...).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// An annotation on the manifest.
    pub fn annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// The `created` time (RFC 3339): fixed by default (the epoch) so builds reproduce.
    pub fn created(mut self, rfc3339: impl Into<String>) -> Self {
        self.created = rfc3339.into();
        self
    }

    /// The platform (for a scratch image; an image on a base has the base's).
    pub fn platform(mut self, platform: Platform) -> Self {
        self.platform = platform;
        self
    }

    /// Writes the layers, configuration and manifest to `layout` and names the image `name`
    /// in its index.
    pub fn build(self, layout: &Layout, name: &str) -> Result<Built> {
        let (mut layers, mut config) = match self.base {
            Some((manifest, config)) => (
                manifest
                    .layers
                    .into_iter()
                    .map(|mut l| {
                        // Docker's gzip layers are the same bytes as OCI's.
                        if l.media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip" {
                            l.media_type = oci::LAYER_GZIP.to_string();
                        }
                        l
                    })
                    .collect::<Vec<_>>(),
                config,
            ),
            None => (
                Vec::new(),
                ImageConfig {
                    architecture: self.platform.architecture.clone(),
                    os: self.platform.os.clone(),
                    ..ImageConfig::default()
                },
            ),
        };
        let mut written = Vec::new();
        for layer in &self.layers {
            let (descriptor, info) = layout.put_layer(layer)?;
            config.rootfs.diff_ids.push(info.diff_id.clone());
            config.history.push(serde_json::json!({
                "created": self.created,
                "created_by": "deploykit",
            }));
            layers.push(descriptor);
            written.push(info);
        }
        config.created = Some(self.created.clone());
        let run = &mut config.config;
        if self.entrypoint.is_some() {
            run.entrypoint = self.entrypoint;
            // A new entrypoint does not inherit the base's arguments.
            run.cmd = None;
        }
        if self.cmd.is_some() {
            run.cmd = self.cmd;
        }
        if !self.env.is_empty() {
            let mut env = run.env.take().unwrap_or_default();
            for (key, value) in self.env {
                env.retain(|e| e.split_once('=').map(|(k, _)| k) != Some(key.as_str()));
                env.push(format!("{key}={value}"));
            }
            run.env = Some(env);
        }
        if self.workdir.is_some() {
            run.working_dir = self.workdir;
        }
        if self.user.is_some() {
            run.user = self.user;
        }
        if !self.ports.is_empty() {
            let ports = run.exposed_ports.get_or_insert_with(BTreeMap::new);
            for port in self.ports {
                ports.insert(format!("{port}/tcp"), serde_json::json!({}));
            }
        }
        if !self.labels.is_empty() {
            run.labels
                .get_or_insert_with(BTreeMap::new)
                .extend(self.labels);
        }
        let config_descriptor = layout.put_bytes(oci::CONFIG, &config.to_bytes())?;
        let mut manifest = Manifest::image(config_descriptor, layers);
        manifest.annotations = self.annotations;
        let descriptor = layout.put_bytes(oci::MANIFEST, &manifest.to_bytes())?;
        layout.tag(name, &descriptor)?;
        Ok(Built {
            descriptor,
            manifest,
            config,
            layers: written,
        })
    }
}
