//! Secrets: the [`SecretProvider`] trait backends resolve secret references through.
//!
//! Secret values never enter revisions, journals, events, logs or errors. A service or
//! environment names the secrets it needs (`DATABASE_URL` ← `production.DATABASE_URL`); a
//! [`crate::Revision`] carries only those references, each pinned to a version (a keyed
//! hash that changes with the value and reveals nothing), and the backend resolves them
//! through a provider when it starts an instance — as Kubernetes does with `secretKeyRef`.
//! The encrypted secrets file and its provider are in `deploykit-secrets`.
//!
//! In memory, values are [`SecretString`]s: `Debug` prints `[REDACTED]`, there is no
//! `Display` and no `Serialize`, and the memory is zeroed on drop. Reading one takes an
//! explicit [`ExposeSecret::expose_secret`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> deploykit_core::Result<()> {
//! use deploykit_core::secrets::{ExposeSecret, Secret, SecretProvider, SecretString};
//!
//! /// A provider with one secret, for a test.
//! #[derive(Debug)]
//! struct One;
//!
//! #[async_trait::async_trait]
//! impl SecretProvider for One {
//!     async fn get(&self, key: &str) -> deploykit_core::Result<Secret> {
//!         match key {
//!             "production.API_TOKEN" => Ok(Secret::new(SecretString::from("tok-123"), "v1")),
//!             _ => Err(deploykit_core::Error::not_found(format!("secret {key}"))),
//!         }
//!     }
//! }
//!
//! let secret = One.get("production.API_TOKEN").await?;
//! assert_eq!(secret.value.expose_secret(), "tok-123");
//! assert_eq!(format!("{:?}", secret.value), "SecretBox<str>([REDACTED])");
//! # Ok(())
//! # }
//! ```
//!
//! A backend resolves a revision's references with [`resolve`], the one place that does, when
//! it first starts the revision's instances, and keeps the values for that revision's instances
//! (the Kubernetes backend in the revision's immutable Secret, the local and simulated ones in
//! memory) instead of resolving them again for each.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
pub use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A reference to a secret: its key path in the provider and, once pinned, the version the
/// revision was made with. The value itself is never part of a revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SecretRef {
    /// Key path in the provider (`production.DATABASE_URL`).
    pub key: String,
    /// The value's version when the revision was made ([`Revision::pin_secrets`]); a new
    /// value gives a new version and so a new revision to roll out.
    ///
    /// [`Revision::pin_secrets`]: crate::Revision::pin_secrets
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// A resolved secret: its value and its version.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Secret {
    /// The value, redacted in `Debug`.
    pub value: SecretString,
    /// A version that changes when the value does and reveals nothing about it.
    pub version: String,
}

impl Secret {
    /// A secret with `value` and `version`.
    pub fn new(value: SecretString, version: impl Into<String>) -> Self {
        Secret {
            value,
            version: version.into(),
        }
    }
}

/// Where secret values come from. The encrypted file's provider is in `deploykit-secrets`;
/// backends add their own (Kubernetes Secrets, AWS Secrets Manager).
///
/// `key` is a dotted key path (`production.DATABASE_URL`). A missing key is
/// [`crate::Error::NotFound`] naming the key.
#[async_trait]
pub trait SecretProvider: Send + Sync + fmt::Debug {
    /// The current value and version of `key`.
    async fn get(&self, key: &str) -> Result<Secret>;
}

/// The values of a revision's secret variables: variable name → value (`Debug` redacts each).
pub type ResolvedSecrets = BTreeMap<String, SecretString>;

/// Resolves every secret reference of a revision (`Revision::config.secrets`: variable name →
/// reference) through `provider`. Every backend resolves secrets here, and only here, when it
/// first starts a revision's instances.
///
/// The rules, the same for every backend:
///
/// - **No provider**: a revision with secret references fails with [`Error::InvalidSpec`] for
///   `secrets.<variable>`, naming the variable and the key; `configure` says how this backend
///   is given a provider (e.g. `"use KubeEnvironment::with_secrets"`).
/// - **A key the provider lacks**: the provider's [`Error::NotFound`], which names the key,
///   noting the variable that refers to it (as [`Revision::pin_secrets`] does).
/// - **A version that no longer matches the pin**: refused with [`Error::InvalidSpec`] for
///   `secrets.<variable>`, naming the variable, the key, the pinned and the current version.
///   The revision was verified with the pinned value, and starting it with another would run a
///   configuration nobody deployed; deploying again pins the current value in a new revision,
///   which rolls out like any other change. A reference that was never pinned (the
///   orchestrator had no provider) takes the current value.
/// - Any other failure of the provider is returned as it is.
///
/// Errors name variables, keys and versions (keyed hashes that reveal nothing), never a value.
/// Values stay [`SecretString`]s until the backend hands them to the instance.
///
/// [`Revision::pin_secrets`]: crate::Revision::pin_secrets
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> deploykit_core::Result<()> {
/// use std::collections::BTreeMap;
/// use deploykit_core::secrets::{self, ExposeSecret, Secret, SecretProvider, SecretString};
/// use deploykit_core::{Digest, EnvironmentKind, EnvironmentSpec, Revision, ServiceSpec};
/// # #[derive(Debug)]
/// # struct Vault;
/// # #[async_trait::async_trait]
/// # impl SecretProvider for Vault {
/// #     async fn get(&self, key: &str) -> deploykit_core::Result<Secret> {
/// #         Ok(Secret::new(SecretString::from("tok-1"), "v1"))
/// #     }
/// # }
/// let web = ServiceSpec::builder()
///     .name("web")
///     .secrets(BTreeMap::from([("API_TOKEN".into(), "production.api_token".into())]))
///     .build()?;
/// let prod = EnvironmentSpec::builder()
///     .name("production")
///     .kind(EnvironmentKind::Production)
///     .build()?;
/// let revision = Revision::new(&web, &prod, Digest::of_bytes(b"image"), "v1")?
///     .pin_secrets(&Vault)
///     .await?;
///
/// let how = "give the backend a provider";
/// let values = secrets::resolve(Some(&Vault), &revision.config.secrets, how).await?;
/// assert_eq!(values["API_TOKEN"].expose_secret(), "tok-1");
///
/// let err = secrets::resolve(None, &revision.config.secrets, how).await.unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "invalid secrets.API_TOKEN: variable API_TOKEN refers to secret production.api_token, \
///      but no secret provider is configured to resolve it: give the backend a provider"
/// );
/// # Ok(())
/// # }
/// ```
pub async fn resolve(
    provider: Option<&dyn SecretProvider>,
    references: &BTreeMap<String, SecretRef>,
    configure: &str,
) -> Result<ResolvedSecrets> {
    let mut values = ResolvedSecrets::new();
    for (variable, reference) in references {
        let key = &reference.key;
        let Some(provider) = provider else {
            return Err(Error::invalid(
                format!("secrets.{variable}"),
                format!(
                    "variable {variable} refers to secret {key}, but no secret provider is \
                     configured to resolve it: {configure}"
                ),
            ));
        };
        let secret = provider
            .get(key)
            .await
            .map_err(|e| e.noting(format_args!("referenced by variable {variable}")))?;
        if let Some(pinned) = &reference.version
            && *pinned != secret.version
        {
            return Err(Error::invalid(
                format!("secrets.{variable}"),
                format!(
                    "secret {key} of variable {variable} changed since the revision was made \
                     (pinned version {pinned}, current version {}): the revision was verified \
                     with the pinned value, so it is not started with another; deploy again to \
                     pin the current value in a new revision",
                    secret.version
                ),
            ));
        }
        values.insert(variable.clone(), secret.value);
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    const VALUE: &str = "hunter2-secret-value";

    /// Secrets by key: value and version; a missing key is `NotFound` naming it.
    #[derive(Debug, Default)]
    struct Provider(Mutex<BTreeMap<String, (String, String)>>);

    impl Provider {
        fn set(&self, key: &str, value: &str, version: &str) {
            let entry = (value.to_string(), version.to_string());
            self.0.lock().unwrap().insert(key.into(), entry);
        }
    }

    #[async_trait]
    impl SecretProvider for Provider {
        async fn get(&self, key: &str) -> Result<Secret> {
            let entry = self.0.lock().unwrap().get(key).cloned();
            let (value, version) =
                entry.ok_or_else(|| Error::not_found(format!("secret {key}")))?;
            Ok(Secret::new(SecretString::from(value), version))
        }
    }

    /// `DATABASE_URL` ← `production.db`, pinned to `version` if given.
    fn references(version: Option<&str>) -> BTreeMap<String, SecretRef> {
        BTreeMap::from([(
            "DATABASE_URL".to_string(),
            SecretRef {
                key: "production.db".into(),
                version: version.map(String::from),
            },
        )])
    }

    /// The error's text and `Debug`, checked to hold no secret value.
    fn text(e: &Error) -> String {
        let text = format!("{} {e:?}", e.chain());
        assert!(!text.contains(VALUE), "a value leaked: {text}");
        text
    }

    #[tokio::test]
    async fn resolves_every_reference_to_its_value() {
        let provider = Provider::default();
        provider.set("production.db", VALUE, "v1");
        provider.set("production.token", "tok", "t1");
        let mut refs = references(Some("v1"));
        refs.insert(
            "TOKEN".into(),
            SecretRef {
                key: "production.token".into(),
                version: None,
            },
        );
        let values = resolve(Some(&provider), &refs, "configure one")
            .await
            .unwrap();
        assert_eq!(values.len(), 2);
        assert_eq!(values["DATABASE_URL"].expose_secret(), VALUE);
        assert_eq!(
            values["TOKEN"].expose_secret(),
            "tok",
            "unpinned: the current value"
        );
        assert!(!format!("{values:?}").contains(VALUE));
    }

    #[tokio::test]
    async fn without_a_provider_the_error_names_variable_key_and_how_to_configure_one() {
        let e = resolve(None, &references(Some("v1")), "use Backend::with_secrets")
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::InvalidSpec { ref field, .. } if field == "secrets.DATABASE_URL")
        );
        assert_eq!(
            text(&e),
            "invalid secrets.DATABASE_URL: variable DATABASE_URL refers to secret production.db, \
             but no secret provider is configured to resolve it: use Backend::with_secrets \
             InvalidSpec { field: \"secrets.DATABASE_URL\", reason: \"variable DATABASE_URL \
             refers to secret production.db, but no secret provider is configured to resolve it: \
             use Backend::with_secrets\" }"
        );
        // Nothing to resolve needs no provider.
        let none = resolve(None, &BTreeMap::new(), "unused").await.unwrap();
        assert!(none.is_empty());
    }

    #[tokio::test]
    async fn a_missing_key_is_not_found_naming_the_key_and_the_variable() {
        let provider = Provider::default();
        provider.set("production.other", VALUE, "v1");
        let e = resolve(Some(&provider), &references(Some("v1")), "-")
            .await
            .unwrap_err();
        assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "secret production.db (referenced by variable DATABASE_URL) not found"
        );
        text(&e);
    }

    #[tokio::test]
    async fn a_version_that_no_longer_matches_the_pin_is_refused() {
        let provider = Provider::default();
        provider.set("production.db", VALUE, "v2");
        let e = resolve(Some(&provider), &references(Some("v1")), "-")
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::InvalidSpec { ref field, .. } if field == "secrets.DATABASE_URL")
        );
        assert!(!e.is_retryable(), "only a new deployment helps");
        let message = e.to_string();
        for part in [
            "secret production.db of variable DATABASE_URL changed",
            "pinned version v1, current version v2",
            "deploy again to pin the current value",
        ] {
            assert!(message.contains(part), "{part:?} in {message}");
        }
        text(&e);
    }
}
