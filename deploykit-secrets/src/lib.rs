//! The encrypted secrets file ([`SecretsFile`], in the manner of sops with `age` recipients) and
//! [`FileSecretProvider`], the [`SecretProvider`] over it.
//!
//! Secret values never enter revisions, journals, events, logs or errors. A service or
//! environment names the secrets it needs (`DATABASE_URL` ← `production.DATABASE_URL`); a
//! [`deploykit_core::Revision`] carries only those references, each pinned to a version (a keyed
//! hash that changes with the value and reveals nothing), and the backend resolves them
//! through a provider when it starts an instance — as Kubernetes does with `secretKeyRef`.
//!
//! In memory, values are [`SecretString`]s: `Debug` prints `[REDACTED]`, there is no
//! `Display` and no `Serialize`, and the memory is zeroed on drop. Reading one takes an
//! explicit [`ExposeSecret::expose_secret`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> deploykit_core::Result<()> {
//! use deploykit_core::secrets::{ExposeSecret, SecretProvider, SecretString};
//! use deploykit_secrets::{FileSecretProvider, Identity, SecretsFile};
//! let ci = Identity::generate();
//! let mut file = SecretsFile::create(&[ci.to_recipient()])?;
//! file.set("production.API_TOKEN", SecretString::from("tok-123"))?;
//!
//! let provider = FileSecretProvider::new("secrets.toml", file);
//! let secret = provider.get("production.API_TOKEN").await?;
//! assert_eq!(secret.value.expose_secret(), "tok-123");
//! assert_eq!(format!("{:?}", secret.value), "SecretBox<str>([REDACTED])");
//! # Ok(())
//! # }
//! ```

mod file;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use deploykit_core::{Error, Result};

pub use deploykit_core::secrets::{ExposeSecret, Secret, SecretProvider, SecretString};
pub use file::{
    DEFAULT_WORK_FACTOR, FORMAT_VERSION, Identity, MAX_WORK_FACTOR, Recipient, SecretsFile,
};

/// A [`SecretProvider`] over an opened [`SecretsFile`]; [`FileSecretProvider::reload`] picks
/// up a new version of the file.
#[derive(Clone)]
pub struct FileSecretProvider {
    name: Arc<str>,
    file: Arc<RwLock<SecretsFile>>,
}

impl fmt::Debug for FileSecretProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSecretProvider")
            .field("file", &self.name)
            .finish()
    }
}

impl FileSecretProvider {
    /// A provider over an opened file; `name` names it in errors.
    pub fn new(name: impl Into<String>, file: SecretsFile) -> Self {
        FileSecretProvider {
            name: name.into().into(),
            file: Arc::new(RwLock::new(file)),
        }
    }

    /// Open the file at `path` with `identity`.
    pub fn open(path: &Path, identity: &Identity) -> Result<Self> {
        let file = SecretsFile::open(path, identity)?;
        Ok(Self::new(path.display().to_string(), file))
    }

    /// Replace the file's content with a newly opened version (e.g. after a rotation).
    pub fn reload(&self, file: SecretsFile) {
        *self.file.write().unwrap_or_else(|e| e.into_inner()) = file;
    }

    /// Every key's version, for showing what a revision would pin.
    pub fn versions(&self) -> BTreeMap<String, String> {
        let file = self.file.read().unwrap_or_else(|e| e.into_inner());
        file.keys()
            .filter_map(|k| file.version(k).map(|v| (k.to_string(), v)))
            .collect()
    }
}

#[async_trait]
impl SecretProvider for FileSecretProvider {
    async fn get(&self, key: &str) -> Result<Secret> {
        let file = self.file.read().unwrap_or_else(|e| e.into_inner());
        match (file.get(key), file.version(key)) {
            (Some(value), Some(version)) => Ok(Secret::new(value.clone(), version)),
            _ => Err(Error::not_found(format!("secret {key} in {}", self.name))),
        }
    }
}
