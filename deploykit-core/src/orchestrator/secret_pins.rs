//! Secret pinning: when a revision is made, each of its secret references is pinned to the
//! provider's current version of that secret, so a changed value makes a new revision and a
//! missing secret refuses the deployment before anything starts.

use std::sync::Arc;

use crate::error::Result;
use crate::model::Revision;
use crate::secrets::SecretProvider;

/// Where secret references are pinned to versions when a revision is made. Without a provider
/// references stay unpinned (the backend resolves whatever is current when it starts an
/// instance). Values are never read into the revision: only versions.
#[derive(Debug)]
pub(crate) struct SecretPins {
    provider: Option<Arc<dyn SecretProvider>>,
}

impl SecretPins {
    /// Pins taken from `provider`, or none.
    pub(crate) fn new(provider: Option<Arc<dyn SecretProvider>>) -> Self {
        SecretPins { provider }
    }

    /// `revision` with every secret reference pinned to the provider's current version
    /// ([`Revision::pin_secrets`]); the error names a secret the provider lacks and the
    /// variable that refers to it.
    pub(crate) async fn pin(&self, revision: Revision) -> Result<Revision> {
        match &self.provider {
            Some(provider) => revision.pin_secrets(provider.as_ref()).await,
            None => Ok(revision),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::error::Error;
    use crate::model::{Digest, EnvironmentKind, EnvironmentSpec, ServiceSpec};
    use crate::secrets::{Secret, SecretString};

    /// Secrets by key, each with a version; a missing key is `NotFound`.
    #[derive(Debug, Default)]
    struct Versions(Mutex<BTreeMap<String, String>>);

    impl Versions {
        fn set(&self, key: &str, version: &str) {
            self.0.lock().unwrap().insert(key.into(), version.into());
        }
    }

    #[async_trait]
    impl SecretProvider for Versions {
        async fn get(&self, key: &str) -> Result<Secret> {
            let version = self.0.lock().unwrap().get(key).cloned();
            let version = version.ok_or_else(|| Error::not_found(format!("secret {key}")))?;
            Ok(Secret::new(SecretString::from("value"), version))
        }
    }

    /// A revision of `web` in production whose `DATABASE_URL` is the secret
    /// `production.DATABASE_URL`.
    fn revision() -> Revision {
        let service = ServiceSpec::builder()
            .name("web")
            .secrets(BTreeMap::from([(
                "DATABASE_URL".into(),
                "production.DATABASE_URL".into(),
            )]))
            .build()
            .unwrap();
        let environment = EnvironmentSpec::builder()
            .name("production")
            .kind(EnvironmentKind::Production)
            .replicas(1)
            .build()
            .unwrap();
        Revision::new(&service, &environment, Digest::of_bytes(b"web"), "v1").unwrap()
    }

    fn pinned_version(revision: &Revision) -> Option<&str> {
        revision.config.secrets["DATABASE_URL"].version.as_deref()
    }

    #[tokio::test]
    async fn without_a_provider_references_stay_unpinned() {
        let unpinned = revision();
        let revision = SecretPins::new(None).pin(unpinned.clone()).await.unwrap();
        assert_eq!(revision, unpinned);
        assert_eq!(pinned_version(&revision), None);
    }

    #[tokio::test]
    async fn references_are_pinned_and_a_new_version_is_a_new_revision() {
        let provider = Arc::new(Versions::default());
        provider.set("production.DATABASE_URL", "v-1");
        let pins = SecretPins::new(Some(provider.clone()));
        let first = pins.pin(revision()).await.unwrap();
        assert_eq!(pinned_version(&first), Some("v-1"));
        assert_eq!(pins.pin(revision()).await.unwrap().id, first.id);
        provider.set("production.DATABASE_URL", "v-2");
        let second = pins.pin(revision()).await.unwrap();
        assert_eq!(pinned_version(&second), Some("v-2"));
        assert_ne!(second.id, first.id);
    }

    #[tokio::test]
    async fn a_missing_secret_is_refused_naming_it_and_its_variable() {
        let pins = SecretPins::new(Some(Arc::new(Versions::default())));
        let e = pins.pin(revision()).await.unwrap_err();
        let message = e.to_string();
        assert!(message.contains("production.DATABASE_URL"), "{message}");
        assert!(message.contains("variable DATABASE_URL"), "{message}");
        assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    }
}
