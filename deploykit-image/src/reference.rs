//! Image references: `registry[:port]/repository[:tag][@sha256:…]`, with Docker's defaults
//! (`nginx` is `docker.io/library/nginx:latest`).
//!
//! ```
//! use deploykit_image::Reference;
//! let r: Reference = "127.0.0.1:5000/shop/web:v1".parse()?;
//! assert_eq!((r.registry(), r.repository(), r.tag()), ("127.0.0.1:5000", "shop/web", Some("v1")));
//! let pinned = r.with_digest("sha256:".to_string() + &"a".repeat(64))?;
//! assert_eq!(pinned.to_string(), format!("127.0.0.1:5000/shop/web@sha256:{}", "a".repeat(64)));
//! let hub: Reference = "nginx".parse()?;
//! assert_eq!(hub.to_string(), "docker.io/library/nginx:latest");
//! # Ok::<(), deploykit_core::Error>(())
//! ```

use std::fmt;
use std::str::FromStr;

use deploykit_core::{Error, Result};

use crate::oci;

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

fn bad(s: &str, why: &str) -> Error {
    Error::invalid("image", format!("{s:?} is not an image reference: {why}"))
}

fn is_repository_component(part: &str) -> bool {
    // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    !part.is_empty()
        && part.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && part.as_bytes()[0].is_ascii_alphanumeric()
        && part.as_bytes()[part.len() - 1].is_ascii_alphanumeric()
}

fn is_tag(tag: &str) -> bool {
    // [\w][\w.-]{0,127}
    !tag.is_empty()
        && tag.len() <= 128
        && (tag.as_bytes()[0].is_ascii_alphanumeric() || tag.as_bytes()[0] == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (rest, digest) = match s.split_once('@') {
            Some((rest, digest)) => {
                oci::check_digest("image", digest)
                    .map_err(|_| bad(s, "the part after @ is not sha256:<64 lowercase hex>"))?;
                (rest, Some(digest.to_string()))
            }
            None => (s, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => ("docker.io".to_string(), rest.to_string()),
        };
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => {
                if !is_tag(tag) {
                    return Err(bad(s, &format!("{tag:?} is not a tag")));
                }
                (repository.to_string(), Some(tag.to_string()))
            }
            _ => (path, None),
        };
        if let Some(part) = repository.split('/').find(|p| !is_repository_component(p)) {
            return Err(bad(
                s,
                &format!("repository part {part:?} must be lowercase letters, digits and . _ -"),
            ));
        }
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl Reference {
    /// The registry's host (and port), e.g. `ghcr.io`, `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository within the registry, e.g. `shop/web`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if any.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The tag or digest to ask the registry for: the digest if there is one.
    pub fn selector(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The same repository pinned to `digest` (no tag).
    pub fn with_digest(&self, digest: impl Into<String>) -> Result<Self> {
        let digest = digest.into();
        oci::check_digest("image.digest", &digest)?;
        Ok(Reference {
            tag: None,
            digest: Some(digest),
            ..self.clone()
        })
    }

    /// `registry/repository` with neither tag nor digest (what the Kubernetes backend's
    /// `RenderOptions::image` takes).
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_with_docker_defaults() {
        let r: Reference = "ghcr.io/acme/web:1.2".parse().unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("ghcr.io", "acme/web", Some("1.2"))
        );
        let r: Reference = "localhost/web".parse().unwrap();
        assert_eq!((r.registry(), r.tag()), ("localhost", Some("latest")));
        let r: Reference = "acme/web".parse().unwrap();
        assert_eq!(r.to_string(), "docker.io/acme/web:latest");
        let digest = format!("sha256:{}", "0".repeat(64));
        let r: Reference = format!("127.0.0.1:5000/web@{digest}").parse().unwrap();
        assert_eq!((r.tag(), r.selector()), (None, digest.as_str()));
    }

    #[test]
    fn bad_references_say_what_is_wrong() {
        for (s, why) in [
            ("Web", "lowercase"),
            ("web:", "not a tag"),
            ("web@sha256:12", "sha256:<64"),
            ("host:5000/-web", "lowercase"),
            ("web//x", "lowercase"),
        ] {
            let e = s.parse::<Reference>().unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
    }
}
