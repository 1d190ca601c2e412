//! Revisions: an artifact plus the effective configuration it runs with in one environment.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::environment::{EnvironmentSpec, Resources};
use super::health::HealthChecks;
use super::ids::check_variable_name;
use super::ids::{Digest, RevisionId, ServiceId};
use super::service::ServiceSpec;
use super::traffic::TrafficPolicy;
use crate::error::{Error, Result};
use crate::secrets::SecretProvider;
pub use crate::secrets::SecretRef;

/// The effective configuration of one instance in one environment: everything besides the
/// artifact that decides how an instance behaves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkloadConfig {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Listening port.
    pub port: Option<u16>,
    /// Variables: the service's, overlaid by the environment's.
    pub variables: BTreeMap<String, String>,
    /// Variables whose values are secrets: name → reference. The backend resolves them when
    /// it starts an instance.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretRef>,
    /// Effective health checks (the environment's override, or the service's).
    pub health: HealthChecks,
    /// Effective resources.
    pub resources: Resources,
    /// How requests reach the instances (the service's policy). Left out of the stored form
    /// when it is the default, so revisions made before it existed keep their ids.
    #[serde(default, skip_serializing_if = "TrafficPolicy::is_default")]
    pub traffic: TrafficPolicy,
}

impl WorkloadConfig {
    /// A content hash of the configuration: BLAKE3 over its canonical JSON (maps are ordered).
    pub fn hash(&self) -> blake3::Hash {
        let json = serde_json::to_vec(self).unwrap_or_default();
        blake3::hash(&json)
    }
}

/// One immutable version of a service in an environment.
///
/// Its [`RevisionId`] hashes the artifact digest and the configuration hash, so deploying the
/// same artifact with the same configuration twice gives the same revision; the `label`
/// (`v2`, a git tag) is for humans and takes no part in identity.
///
/// ```
/// use deploykit_core::{Digest, EnvironmentKind, EnvironmentSpec, Revision, ServiceSpec};
/// let web = ServiceSpec::builder().name("web").build()?;
/// let prod = EnvironmentSpec::builder().name("production").kind(EnvironmentKind::Production).build()?;
/// let a = Revision::new(&web, &prod, Digest::of_bytes(b"image v2"), "v2")?;
/// let b = Revision::new(&web, &prod, Digest::of_bytes(b"image v2"), "v2-again")?;
/// assert_eq!(a.id, b.id);
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Revision {
    /// Identity: hash of artifact digest and configuration hash.
    pub id: RevisionId,
    /// The service this is a revision of.
    pub service: ServiceId,
    /// Human label (`v2`).
    pub label: String,
    /// The artifact's content digest.
    pub artifact: Digest,
    /// The effective configuration.
    pub config: WorkloadConfig,
}

impl Revision {
    /// The revision of `service` running `artifact` in `environment`.
    ///
    /// Fails with an [`crate::Error::InvalidSpec`] if the combination is impossible, e.g. an
    /// environment with 0 replicas for a service with a readiness gate.
    pub fn new(
        service: &ServiceSpec,
        environment: &EnvironmentSpec,
        artifact: Digest,
        label: impl Into<String>,
    ) -> Result<Self> {
        service.validate()?;
        environment.validate()?;
        let health = environment
            .health
            .clone()
            .unwrap_or_else(|| service.health.clone());
        let mut variables = service.variables.clone();
        for (k, v) in &environment.variables {
            check_variable_name("environment.variables", k)?;
            variables.insert(k.clone(), v.clone());
        }
        let mut secrets = BTreeMap::new();
        for (name, key) in service.secrets.iter().chain(&environment.secrets) {
            secrets.insert(
                name.clone(),
                SecretRef {
                    key: key.clone(),
                    version: None,
                },
            );
        }
        if let Some(name) = secrets.keys().find(|n| variables.contains_key(*n)) {
            return Err(Error::invalid(
                format!("environment.secrets.{name}"),
                format!("{name} is both a variable and a secret; it must be one or the other"),
            ));
        }
        let config = WorkloadConfig {
            command: service.command.clone(),
            port: service.port,
            variables,
            secrets,
            health,
            resources: service.resources.overlay(&environment.resources),
            traffic: service.traffic.clone(),
        };
        Ok(Revision {
            id: Self::identity(&artifact, &config),
            service: service.name.clone(),
            label: label.into(),
            artifact,
            config,
        })
    }

    fn identity(artifact: &Digest, config: &WorkloadConfig) -> RevisionId {
        let mut hasher = blake3::Hasher::new();
        hasher.update(artifact.as_str().as_bytes());
        hasher.update(&[0]);
        hasher.update(config.hash().as_bytes());
        RevisionId::from_hash(&hasher.finalize())
    }

    /// Pin every secret reference to the provider's current version, so that changing a
    /// secret's value makes a new revision (which a deployment then rolls out like any other
    /// change). Fails with [`Error::NotFound`] naming the first secret the provider lacks.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> deploykit_core::Result<()> {
    /// use std::collections::BTreeMap;
    /// use deploykit_core::secrets::{Secret, SecretProvider, SecretString};
    /// use deploykit_core::{Digest, EnvironmentKind, EnvironmentSpec, Revision, ServiceSpec};
    /// # #[derive(Debug)]
    /// # struct Vault;
    /// # #[async_trait::async_trait]
    /// # impl SecretProvider for Vault {
    /// #     async fn get(&self, key: &str) -> deploykit_core::Result<Secret> {
    /// #         Ok(Secret::new(SecretString::from("tok-1"), "v1"))
    /// #     }
    /// # }
    /// let web = ServiceSpec::builder().name("web").build()?;
    /// let prod = EnvironmentSpec::builder()
    ///     .name("production")
    ///     .kind(EnvironmentKind::Production)
    ///     .secrets(BTreeMap::from([("API_TOKEN".into(), "production.api_token".into())]))
    ///     .build()?;
    /// let provider = Vault; // e.g. `deploykit_secrets::FileSecretProvider`
    ///
    /// let v1 = Revision::new(&web, &prod, Digest::of_bytes(b"image"), "v1")?
    ///     .pin_secrets(&provider)
    ///     .await?;
    /// assert!(!format!("{v1:?}").contains("tok-1"));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn pin_secrets(mut self, provider: &dyn SecretProvider) -> Result<Self> {
        for (name, reference) in &mut self.config.secrets {
            let secret = provider
                .get(&reference.key)
                .await
                .map_err(|e| e.noting(format_args!("referenced by variable {name}")))?;
            reference.version = Some(secret.version);
        }
        self.id = Self::identity(&self.artifact, &self.config);
        Ok(self)
    }

    /// The same build and service configuration in another environment: `environment`'s
    /// variables and secrets are laid over this revision's (its own win where both set one),
    /// and its health checks and resources replace this one's where it sets them. The label
    /// and artifact are kept; the id is computed afresh from the new configuration. This is
    /// how a standby environment runs what its primary runs, with its own database address.
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use deploykit_core::{Digest, EnvironmentKind, EnvironmentSpec, Revision, ServiceSpec};
    /// let web = ServiceSpec::builder().name("web").build()?;
    /// let env = |name: &str, db: &str| {
    ///     EnvironmentSpec::builder()
    ///         .name(name)
    ///         .kind(EnvironmentKind::Production)
    ///         .variables(BTreeMap::from([("DATABASE_URL".into(), db.into())]))
    ///         .build()
    /// };
    /// let home = Revision::new(&web, &env("production", "host=a")?, Digest::of_bytes(b"v7"), "v7")?;
    /// let dr = home.in_environment(&env("production-dr", "host=b")?)?;
    /// assert_eq!((dr.label.as_str(), &dr.artifact), ("v7", &home.artifact));
    /// assert_eq!(dr.config.variables["DATABASE_URL"], "host=b");
    /// assert_ne!(dr.id, home.id);
    /// # Ok::<(), deploykit_core::Error>(())
    /// ```
    pub fn in_environment(&self, environment: &EnvironmentSpec) -> Result<Revision> {
        environment.validate()?;
        if let Some(name) = environment
            .secrets
            .keys()
            .find(|n| environment.variables.contains_key(*n))
        {
            return Err(Error::invalid(
                format!("environment.secrets.{name}"),
                format!("{name} is both a variable and a secret; it must be one or the other"),
            ));
        }
        let mut config = self.config.clone();
        for (k, v) in &environment.variables {
            check_variable_name("environment.variables", k)?;
            config.secrets.remove(k);
            config.variables.insert(k.clone(), v.clone());
        }
        for (name, key) in &environment.secrets {
            config.variables.remove(name);
            config.secrets.insert(
                name.clone(),
                SecretRef {
                    key: key.clone(),
                    version: None,
                },
            );
        }
        if let Some(health) = &environment.health {
            config.health = health.clone();
        }
        config.resources = config.resources.overlay(&environment.resources);
        Ok(Revision {
            id: Self::identity(&self.artifact, &config),
            service: self.service.clone(),
            label: self.label.clone(),
            artifact: self.artifact.clone(),
            config,
        })
    }

    /// `label (id)`, for messages.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.label, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::environment::EnvironmentKind;
    use crate::model::health::{Probe, ProbeAction};

    fn env(replicas: u32) -> EnvironmentSpec {
        EnvironmentSpec::builder()
            .name("production")
            .kind(EnvironmentKind::Production)
            .replicas(replicas)
            .variables(BTreeMap::from([("MODE".into(), "prod".into())]))
            .build()
            .unwrap()
    }

    fn web(port: u16) -> ServiceSpec {
        ServiceSpec::builder()
            .name("web")
            .port(port)
            .variables(BTreeMap::from([
                ("MODE".into(), "dev".into()),
                ("LOG".into(), "info".into()),
            ]))
            .health(
                HealthChecks::builder()
                    .readiness(
                        Probe::builder()
                            .action(ProbeAction::http("/up"))
                            .build()
                            .unwrap(),
                    )
                    .build(),
            )
            .build()
            .unwrap()
    }

    #[test]
    fn identity_is_artifact_plus_config() {
        let d1 = Digest::of_bytes(b"one");
        let a = Revision::new(&web(80), &env(2), d1.clone(), "v1").unwrap();
        let b = Revision::new(&web(80), &env(2), d1.clone(), "other label").unwrap();
        assert_eq!(a.id, b.id);
        // Replica count is not part of the revision.
        assert_eq!(
            a.id,
            Revision::new(&web(80), &env(5), d1.clone(), "v1")
                .unwrap()
                .id
        );
        // Config changes and artifact changes give new revisions.
        assert_ne!(a.id, Revision::new(&web(81), &env(2), d1, "v1").unwrap().id);
        assert_ne!(
            a.id,
            Revision::new(&web(80), &env(2), Digest::of_bytes(b"two"), "v1")
                .unwrap()
                .id
        );
        assert_eq!(a.config.variables["MODE"], "prod");
        assert_eq!(a.config.variables["LOG"], "info");
    }

    #[test]
    fn a_revision_in_another_environment_takes_its_settings_over_its_own() {
        let home = Revision::new(&web(80), &env(2), Digest::of_bytes(b"one"), "v1").unwrap();
        let dr_spec = |variables: &[(&str, &str)], secrets: &[(&str, &str)]| {
            EnvironmentSpec::builder()
                .name("production-dr")
                .kind(EnvironmentKind::Production)
                .variables(
                    variables
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                )
                .secrets(
                    secrets
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                )
                .build()
                .unwrap()
        };
        let dr = home
            .in_environment(&dr_spec(&[("MODE", "dr")], &[("LOG", "dr.log")]))
            .unwrap();
        assert_eq!(dr.config.variables["MODE"], "dr");
        assert!(!dr.config.variables.contains_key("LOG"), "now a secret");
        assert_eq!(dr.config.secrets["LOG"].key, "dr.log");
        assert_eq!((&dr.label, &dr.artifact), (&home.label, &home.artifact));
        assert_ne!(dr.id, home.id);
        // Nothing to change: the very same revision.
        assert_eq!(home.in_environment(&dr_spec(&[], &[])).unwrap(), home);
        let both = home
            .in_environment(&dr_spec(&[("X", "1")], &[("X", "x")]))
            .unwrap_err();
        assert!(both.to_string().contains("environment.secrets.X"), "{both}");
    }
}
