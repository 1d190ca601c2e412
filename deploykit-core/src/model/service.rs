//! Services: the unit that is built, deployed and rolled back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use typed_builder::TypedBuilder;

use super::environment::Resources;
use super::health::HealthChecks;
use super::ids::{ServiceId, check_secret_refs, check_variable_name};
use super::traffic::TrafficPolicy;
use crate::error::{Error, Result};

/// What a service is: how to run one instance of it and how to tell whether it is healthy.
///
/// ```
/// use deploykit_core::{HealthChecks, Probe, ProbeAction, ServiceSpec};
/// let web = ServiceSpec::builder()
///     .name("web")
///     .command(vec!["./server".into()])
///     .port(8080)
///     .health(HealthChecks::builder()
///         .readiness(Probe::builder().action(ProbeAction::http("/health")).build()?)
///         .build())
///     .build()?;
/// assert_eq!(web.name.as_str(), "web");
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[serde(remote = "Self")]
#[builder(build_method(into = Result<ServiceSpec>))]
#[non_exhaustive]
pub struct ServiceSpec {
    /// The service's name; the builder takes a string and validates it in `build`.
    #[builder(setter(transform = |name: impl Into<String>| ServiceId::unchecked(name.into())))]
    pub name: ServiceId,
    /// Program and arguments of one instance (empty: the artifact's own entry point).
    #[builder(default)]
    pub command: Vec<String>,
    /// The port the service listens on, if any.
    #[builder(default, setter(strip_option))]
    pub port: Option<u16>,
    /// Variables common to every environment.
    #[builder(default)]
    pub variables: BTreeMap<String, String>,
    /// Secrets common to every environment: variable name → secret key path
    /// (`DATABASE_URL` → `common.DATABASE_URL`). Only the reference is stored; see
    /// [`crate::secrets`].
    #[builder(default)]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// Health checks.
    #[builder(default)]
    pub health: HealthChecks,
    /// Resource requests and limits of one instance.
    #[builder(default)]
    pub resources: Resources,
    /// How requests reach the instances: protocol, timeouts, retries, circuit breaking, rate
    /// limits (default: HTTP/1.1 and the router's defaults).
    #[builder(default)]
    #[serde(default, skip_serializing_if = "TrafficPolicy::is_default")]
    pub traffic: TrafficPolicy,
}

crate::validate::validated_serde!(ServiceSpec, ServiceSpec::validate);

impl From<ServiceSpec> for Result<ServiceSpec> {
    fn from(spec: ServiceSpec) -> Self {
        spec.validate()?;
        Ok(spec)
    }
}

impl ServiceSpec {
    /// Check the spec as its builder and deserialiser do (for a spec edited after building);
    /// the error names the field (`service.port`).
    pub fn validate(&self) -> Result<()> {
        ServiceId::new(self.name.as_str())?;
        if self.port == Some(0) {
            return Err(Error::invalid("service.port", "port 0 is not a port"));
        }
        for key in self.variables.keys() {
            check_variable_name("service.variables", key)?;
        }
        check_secret_refs("service.secrets", &self.secrets)?;
        self.health.validate("service.health")?;
        self.resources.validate("service.resources")?;
        self.traffic.validate("service.traffic")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_services_name_the_field() {
        let err = ServiceSpec::builder()
            .name("Web Server")
            .build()
            .unwrap_err();
        assert!(matches!(&err, Error::InvalidSpec { field, .. } if field == "service.name"));
        let err = ServiceSpec::builder()
            .name("web")
            .port(0)
            .build()
            .unwrap_err();
        assert!(matches!(&err, Error::InvalidSpec { field, .. } if field == "service.port"));
        let vars = BTreeMap::from([("1X".to_string(), "v".to_string())]);
        let err = ServiceSpec::builder()
            .name("web")
            .variables(vars)
            .build()
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidSpec { field, .. } if field == "service.variables.1X")
        );
    }
}
