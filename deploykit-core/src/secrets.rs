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

use std::fmt;

use async_trait::async_trait;
pub use secrecy::{ExposeSecret, SecretString};

use crate::error::Result;

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
