//! The OCI image format's documents: [`Descriptor`], [`Manifest`], [`Index`] and the image
//! [`ImageConfig`], with the media types deploykit writes and the Docker ones it reads.
//!
//! Fields deploykit does not model are kept (`extra`), so a base image's configuration passes
//! through a rebuild unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use deploykit_core::{Error, Result};

/// An OCI image manifest.
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// An OCI image index (a list of manifests).
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// An OCI image configuration.
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// A gzip-compressed layer tarball.
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The empty descriptor's media type (artifacts with no configuration of their own).
pub const EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// A Docker image manifest (schema 2), read as an OCI manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// A Docker manifest list, read as an OCI index.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// What deploykit asks a registry for when it fetches a manifest.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// `sha256:<hex>` of `bytes`: the digest OCI content is addressed by.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Checks that `digest` is `sha256:` and 64 lowercase hex digits; `field` names it in the error.
pub fn check_digest(field: &str, digest: &str) -> Result<()> {
    let ok = digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("{digest:?} is not a sha256 digest (sha256:<64 lowercase hex>)"),
        ))
    }
}

/// A reference to content: its media type, digest and size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Descriptor {
    /// What the content is.
    pub media_type: String,
    /// `sha256:<hex>` of the content.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// For a manifest in an index: the platform it runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// For an artifact manifest: its type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// The descriptor of `bytes` as `media_type`.
    pub fn of(media_type: &str, bytes: &[u8]) -> Self {
        Descriptor {
            media_type: media_type.to_string(),
            digest: sha256(bytes),
            size: bytes.len() as u64,
            platform: None,
            artifact_type: None,
            annotations: BTreeMap::new(),
        }
    }

    /// The empty JSON object `{}` as [`EMPTY`]: the configuration of an artifact.
    pub fn empty() -> Self {
        Descriptor::of(EMPTY, b"{}")
    }
}

/// An operating system and architecture.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Platform {
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `linux`, ...
    pub os: String,
    /// `v8`, ... for ARM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// `os`/`architecture`.
    pub fn new(os: impl Into<String>, architecture: impl Into<String>) -> Self {
        Platform {
            architecture: architecture.into(),
            os: os.into(),
            variant: None,
        }
    }

    /// The platform of this machine, in Go's names (`linux`/`amd64`, `linux`/`arm64`).
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        Platform::new(std::env::consts::OS, arch)
    }
}

/// An image (or artifact) manifest: a configuration and layers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`MANIFEST`] (or [`DOCKER_MANIFEST`] when read from a Docker registry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// For an artifact: its type (an SBOM, a signature, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The configuration blob.
    pub config: Descriptor,
    /// The layers, base first.
    pub layers: Vec<Descriptor>,
    /// For an artifact: the manifest it refers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// An OCI image manifest of `config` and `layers`.
    pub fn image(config: Descriptor, layers: Vec<Descriptor>) -> Self {
        Manifest {
            schema_version: 2,
            media_type: Some(MANIFEST.to_string()),
            artifact_type: None,
            config,
            layers,
            subject: None,
            annotations: BTreeMap::new(),
        }
    }

    /// The manifest's JSON, as pushed and digested.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest serializes")
    }
}

/// An image index: manifests for several platforms, or an image layout's entry points.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// [`INDEX`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests.
    pub manifests: Vec<Descriptor>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Index {
    /// An OCI index of `manifests`.
    pub fn of(manifests: Vec<Descriptor>) -> Self {
        Index {
            schema_version: 2,
            media_type: Some(INDEX.to_string()),
            manifests,
            annotations: BTreeMap::new(),
        }
    }

    /// The index's JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an index serializes")
    }
}

/// An image configuration: what runs, and the layers' uncompressed digests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ImageConfig {
    /// When the image was made (RFC 3339); fixed for reproducible images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// `amd64`, ...
    pub architecture: String,
    /// `linux`, ...
    pub os: String,
    /// What runs.
    #[serde(default)]
    pub config: RunConfig,
    /// The uncompressed digests of the layers.
    pub rootfs: RootFs,
    /// One entry per layer (and per configuration change).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<serde_json::Value>,
    /// Fields deploykit does not model, kept as they were.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// How the image's process runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct RunConfig {
    /// The user (name or uid\[:gid\]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Ports the process listens on (`8080/tcp` → `{}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    /// `KEY=VALUE` pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// The program and its first arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Arguments after the entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// The working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Fields deploykit does not model, kept as they were.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// The layers' uncompressed digests (`diff_ids`), base first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `sha256:<hex>` of each uncompressed layer tarball.
    pub diff_ids: Vec<String>,
}

impl Default for RootFs {
    fn default() -> Self {
        RootFs {
            kind: "layers".to_string(),
            diff_ids: Vec::new(),
        }
    }
}

impl ImageConfig {
    /// The configuration's JSON, as pushed and digested (maps in key order: the same
    /// configuration always has the same digest).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an image configuration serializes")
    }
}

/// Parses `bytes` as JSON document `what` (`manifest sha256:…`), saying where it is wrong.
pub fn parse<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::invalid(what, format!("not valid: {e}")))
}
