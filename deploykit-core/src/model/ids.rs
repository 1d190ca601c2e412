//! Validated identifiers: services, environments, revisions, deployments and content digests.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Checks a DNS-label-like name: 1–63 characters of `a-z`, `0-9` and `-`, starting with a
/// letter and not ending with `-`. Kubernetes object names and hostnames accept it as is.
fn check_label(field: &str, value: &str) -> Result<()> {
    let ok_chars = value
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let starts = value.starts_with(|c: char| c.is_ascii_lowercase());
    if value.is_empty() || value.len() > 63 || !ok_chars || !starts || value.ends_with('-') {
        return Err(Error::invalid(
            field,
            format!(
                "{value:?} is not a valid name: use 1-63 lowercase letters, digits and '-', \
                 starting with a letter and not ending with '-'"
            ),
        ));
    }
    Ok(())
}

macro_rules! label_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps a name.
            pub fn new(name: impl Into<String>) -> Result<Self> {
                let name = name.into();
                check_label($field, &name)?;
                Ok(Self(name))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Wraps a name a builder validates later in `build`.
            pub(crate) fn unchecked(name: String) -> Self {
                Self(name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Error;
            fn try_from(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

label_id!(
    /// The name of a service (an application component deployed as one unit), e.g. `web`.
    ServiceId,
    "service.name"
);
label_id!(
    /// The name of an environment, e.g. `production` or `preview-pr-42`.
    EnvironmentName,
    "environment.name"
);

/// The identity of a revision: the first 16 hex digits of a BLAKE3 hash over the artifact digest
/// and the configuration hash, so identical inputs always give the same revision. Cheap to clone
/// (it is shared, not copied): routes and observations carry it everywhere.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RevisionId(Arc<str>);

impl RevisionId {
    pub(crate) fn from_hash(hash: &blake3::Hash) -> Self {
        RevisionId(hash.to_hex()[..16].into())
    }

    /// Parses a revision id as printed (16 lowercase hex digits).
    pub fn parse(s: &str) -> Result<Self> {
        if s.len() == 16
            && s.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        {
            Ok(RevisionId(s.into()))
        } else {
            Err(Error::invalid(
                "revision",
                format!("{s:?} is not a revision id (16 lowercase hex digits)"),
            ))
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RevisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The identity of one deployment (one attempt to move a service in an environment to a
/// revision).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeploymentId(String);

impl DeploymentId {
    /// Wraps an id read back from a store or given by a caller.
    pub fn new(id: impl Into<String>) -> Self {
        DeploymentId(id.into())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeploymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The content digest of an artifact, `algorithm:hex`, e.g. an OCI image digest
/// `sha256:4f2a…` or a deploykit build output `blake3:9c1e…`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 hex>` or `blake3:<64 hex>`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "artifact",
                format!(
                    "{s:?} is not a content digest: expected sha256:<64 hex> or blake3:<64 hex>"
                ),
            )
        };
        let (algo, hex) = s.split_once(':').ok_or_else(bad)?;
        let hex_ok = hex.len() == 64
            && hex
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
        if !matches!(algo, "sha256" | "blake3") || !hex_ok {
            return Err(bad());
        }
        Ok(Digest(s.to_string()))
    }

    /// The BLAKE3 digest of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Digest(format!("blake3:{}", blake3::hash(bytes).to_hex()))
    }

    /// The digest as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short form for humans: algorithm and the first 12 hex digits.
    pub fn short(&self) -> &str {
        let end = self.0.find(':').map_or(0, |i| i + 13).min(self.0.len());
        &self.0[..end]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Digest {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

/// Secret references: variable names that are names, key paths that are paths.
pub(crate) fn check_secret_refs(field: &str, secrets: &BTreeMap<String, String>) -> Result<()> {
    for (name, key) in secrets {
        check_variable_name(field, name)?;
        let ok = !key.is_empty()
            && key.split('.').all(|s| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
        if !ok {
            return Err(Error::invalid(
                format!("{field}.{name}"),
                format!(
                    "{key:?} is not a secret key path: dot-separated segments of letters, digits, `_` and `-`"
                ),
            ));
        }
    }
    Ok(())
}

pub(crate) fn check_variable_name(field: &str, key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            format!("{field}.{key}"),
            "variable names are letters, digits and '_', not starting with a digit",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(ServiceId::new("web-api2").is_ok());
        for bad in [
            "",
            "Web",
            "-web",
            "web-",
            "2web",
            "web_api",
            &"a".repeat(64),
        ] {
            let err = ServiceId::new(bad).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidSpec { field, .. } if field == "service.name"),
                "{bad:?}: {err}"
            );
        }
        let err = EnvironmentName::new("Prod").unwrap_err();
        assert!(err.to_string().starts_with("invalid environment.name"));
    }

    #[test]
    fn digests_are_validated() {
        let d = Digest::of_bytes(b"hello");
        assert_eq!(Digest::parse(d.as_str()).unwrap(), d);
        assert_eq!(d.short().len(), "blake3:".len() + 12);
        for bad in [
            "",
            "sha256",
            "md5:abcd",
            &format!("sha256:{}", "A".repeat(64)),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn serde_rejects_invalid_names() {
        let r: std::result::Result<ServiceId, _> = serde_json::from_str("\"Bad Name\"");
        assert!(r.is_err());
        let ok: ServiceId = serde_json::from_str("\"web\"").unwrap();
        assert_eq!(ok.as_str(), "web");
    }
}
