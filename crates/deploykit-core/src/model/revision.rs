//! Revisions: an artifact plus the effective configuration it runs with in one environment.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::environment::{EnvironmentSpec, Resources, replicas_zero_with_gate};
use super::health::HealthChecks;
use super::ids::{Digest, RevisionId, ServiceId};
use super::service::{ServiceSpec, check_variable_name};
use crate::error::Result;

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
    /// Effective health checks (the environment's override, or the service's).
    pub health: HealthChecks,
    /// Effective resources.
    pub resources: Resources,
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
        if environment.replicas == 0 && health.gates_readiness() {
            return Err(replicas_zero_with_gate());
        }
        let mut variables = service.variables.clone();
        for (k, v) in &environment.variables {
            check_variable_name("environment.variables", k)?;
            variables.insert(k.clone(), v.clone());
        }
        let config = WorkloadConfig {
            command: service.command.clone(),
            port: service.port,
            variables,
            health,
            resources: service.resources.overlay(&environment.resources),
        };
        let mut hasher = blake3::Hasher::new();
        hasher.update(artifact.as_str().as_bytes());
        hasher.update(&[0]);
        hasher.update(config.hash().as_bytes());
        Ok(Revision {
            id: RevisionId::from_hash(&hasher.finalize()),
            service: service.name.clone(),
            label: label.into(),
            artifact,
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
    use crate::Error;
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
    fn zero_replicas_with_a_readiness_gate_is_rejected() {
        let err = Revision::new(&web(80), &env(0), Digest::of_bytes(b"x"), "v1").unwrap_err();
        assert!(
            matches!(&err, Error::InvalidSpec { field, .. } if field == "environment.replicas")
        );
    }
}
