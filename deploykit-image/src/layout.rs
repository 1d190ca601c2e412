//! The OCI image layout: a directory with `oci-layout`, `index.json` and `blobs/sha256/<hex>`,
//! which `skopeo`, `crane`, `oras` and container runtimes read. Blobs are written to a
//! temporary file and renamed into place once their digest is known, so a blob that exists is
//! whole; writing one that exists already is a no-op.

use std::io::Write;
use std::path::{Path, PathBuf};

use deploykit_core::{Error, Result};

use crate::layer::{Layer, LayerInfo};
use crate::oci::{self, Descriptor, Index};

/// The annotation naming an image in a layout's `index.json` (`oci:<dir>:<name>` in skopeo).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI image layout directory.
#[derive(Clone, Debug)]
pub struct Layout {
    dir: PathBuf,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::backend(what, format!("{}: {e}", path.display()))
}

impl Layout {
    /// The layout in `dir`, made (with an empty index) if it is not one yet.
    pub fn open_or_create(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(|e| io_error("create image layout", &blobs, e))?;
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let layout = Layout { dir };
        if !layout.dir.join("index.json").exists() {
            layout.write_index(&Index::of(Vec::new()))?;
        }
        Ok(layout)
    }

    /// The layout in `dir`, which must exist.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        if !dir.join("oci-layout").is_file() {
            return Err(Error::invalid(
                "image.layout",
                format!(
                    "{} is not an OCI image layout (no oci-layout file)",
                    dir.display()
                ),
            ));
        }
        Ok(Layout { dir })
    }

    /// The layout's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the blob `digest` is (whether or not it exists).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        oci::check_digest("image.blob", digest)?;
        Ok(self.dir.join("blobs").join("sha256").join(&digest[7..]))
    }

    /// Whether the blob `digest` is in the layout.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// The bytes of blob `digest`, checked against the digest.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::not_found(format!("blob {digest} in {}", self.dir.display()))
            }
            _ => io_error("read image blob", &path, e),
        })?;
        if oci::sha256(&bytes) != digest {
            return Err(Error::backend(
                "read image blob",
                format!(
                    "{} does not hash to its name: the layout is corrupt",
                    path.display()
                ),
            ));
        }
        Ok(bytes)
    }

    /// Stores `bytes` as a blob of `media_type`; its descriptor.
    pub fn put_bytes(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor> {
        let descriptor = Descriptor::of(media_type, bytes);
        let path = self.blob_path(&descriptor.digest)?;
        if !path.is_file() {
            write_atomic(&path, bytes)?;
        }
        Ok(descriptor)
    }

    /// Writes `layer` (gzip) as a blob; its descriptor and digests.
    pub fn put_layer(&self, layer: &Layer) -> Result<(Descriptor, LayerInfo)> {
        let blobs = self.dir.join("blobs").join("sha256");
        let mut tmp = tempfile::NamedTempFile::new_in(&blobs)
            .map_err(|e| io_error("write image layer", &blobs, e))?;
        let info = {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
            let info = layer.write(&mut out)?;
            out.flush()
                .map_err(|e| io_error("write image layer", &blobs, e))?;
            info
        };
        let path = self.blob_path(&info.digest)?;
        if !path.is_file() {
            tmp.persist(&path)
                .map_err(|e| io_error("write image layer", &path, e.error))?;
        }
        let descriptor = Descriptor {
            media_type: oci::LAYER_GZIP.to_string(),
            digest: info.digest.clone(),
            size: info.size,
            platform: None,
            artifact_type: None,
            annotations: Default::default(),
        };
        Ok((descriptor, info))
    }

    /// The layout's `index.json`.
    pub fn index(&self) -> Result<Index> {
        let path = self.dir.join("index.json");
        let bytes = std::fs::read(&path).map_err(|e| io_error("read image layout", &path, e))?;
        oci::parse(&path.display().to_string(), &bytes)
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        write_atomic(&self.dir.join("index.json"), &index.to_bytes())
    }

    /// Names `manifest` `name` in the index, replacing whatever had that name.
    pub fn tag(&self, name: &str, manifest: &Descriptor) -> Result<()> {
        let mut index = self.index()?;
        index
            .manifests
            .retain(|d| d.annotations.get(REF_NAME).map(String::as_str) != Some(name));
        let mut entry = manifest.clone();
        entry
            .annotations
            .insert(REF_NAME.to_string(), name.to_string());
        index.manifests.push(entry);
        self.write_index(&index)
    }

    /// The manifest named `name` in the index.
    pub fn tagged(&self, name: &str) -> Result<Descriptor> {
        self.index()?
            .manifests
            .into_iter()
            .find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(name))
            .ok_or_else(|| Error::not_found(format!("image {name:?} in {}", self.dir.display())))
    }
}

/// Writes `bytes` to `path` through a temporary file renamed into place.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(|e| io_error("write image layout", dir, e))?;
    tmp.write_all(bytes)
        .map_err(|e| io_error("write image layout", path, e))?;
    tmp.persist(path)
        .map_err(|e| io_error("write image layout", path, e.error))?;
    Ok(())
}

impl Layout {
    /// Stores `artifact` (a manifest whose `subject` is an image in this layout) and lists it
    /// in the index, where [`Layout::referrers`] finds it.
    pub fn put_referrer(&self, artifact: &oci::Manifest) -> Result<Descriptor> {
        let Some(subject) = &artifact.subject else {
            return Err(Error::invalid(
                "image.referrer",
                "an artifact without a subject refers to nothing",
            ));
        };
        let bytes = artifact.to_bytes();
        let mut descriptor = self.put_bytes(oci::MANIFEST, &bytes)?;
        descriptor.artifact_type = artifact.artifact_type.clone();
        descriptor.annotations = artifact.annotations.clone();
        let mut index = self.index()?;
        if !index
            .manifests
            .iter()
            .any(|d| d.digest == descriptor.digest)
        {
            index.manifests.push(descriptor.clone());
            self.write_index(&index)?;
        }
        tracing::debug!(subject = %subject.digest, artifact = %descriptor.digest, "referrer stored");
        Ok(descriptor)
    }

    /// The artifacts in the index that refer to `subject` (a manifest digest).
    pub fn referrers(&self, subject: &str) -> Result<Vec<Descriptor>> {
        let mut out = Vec::new();
        for d in self.index()?.manifests {
            if d.artifact_type.is_none() {
                continue;
            }
            let Ok(bytes) = self.read_blob(&d.digest) else {
                continue;
            };
            let manifest: oci::Manifest = oci::parse(&d.digest, &bytes)?;
            if manifest
                .subject
                .as_ref()
                .is_some_and(|s| s.digest == subject)
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Every regular file of the image `manifest` (a digest in this layout), as its layers
    /// leave them (a later layer replaces or deletes, by whiteout, what an earlier one put):
    /// path (without the leading `/`), SHA-256 and size, sorted by path.
    pub fn files(&self, manifest: &str) -> Result<Vec<(String, String, u64)>> {
        use sha2::{Digest as _, Sha256};
        use std::collections::BTreeMap;
        use std::io::Read;
        let image: oci::Manifest = oci::parse(manifest, &self.read_blob(manifest)?)?;
        let mut files: BTreeMap<String, (String, u64)> = BTreeMap::new();
        for layer in &image.layers {
            let path = self.blob_path(&layer.digest)?;
            let file =
                std::fs::File::open(&path).map_err(|e| io_error("read image layer", &path, e))?;
            let failed = |e: std::io::Error| io_error("read image layer", &path, e);
            let mut tar =
                tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
            for entry in tar.entries().map_err(failed)? {
                let mut entry = entry.map_err(failed)?;
                let name = entry
                    .path()
                    .map_err(failed)?
                    .to_string_lossy()
                    .trim_start_matches("./")
                    .trim_start_matches('/')
                    .to_string();
                let (dir, base) = name
                    .rsplit_once('/')
                    .map_or(("", name.as_str()), |(d, b)| (d, b));
                if let Some(deleted) = base.strip_prefix(".wh.") {
                    if deleted == ".wh..opq" || base == ".wh..wh..opq" {
                        let prefix = format!("{dir}/");
                        files.retain(|p, _| !p.starts_with(&prefix));
                    } else {
                        let gone = if dir.is_empty() {
                            deleted.to_string()
                        } else {
                            format!("{dir}/{deleted}")
                        };
                        files.remove(&gone);
                        let prefix = format!("{gone}/");
                        files.retain(|p, _| !p.starts_with(&prefix));
                    }
                    continue;
                }
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let mut hasher = Sha256::new();
                let mut buf = [0u8; 64 * 1024];
                let mut size = 0u64;
                loop {
                    let n = entry.read(&mut buf).map_err(failed)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    size += n as u64;
                }
                files.insert(name, (format!("{:x}", hasher.finalize()), size));
            }
        }
        Ok(files.into_iter().map(|(p, (h, s))| (p, h, s)).collect())
    }
}
