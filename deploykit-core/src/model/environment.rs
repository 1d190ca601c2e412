//! Environments: where a service runs, at what size, and how carefully it is updated.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use typed_builder::TypedBuilder;

use super::health::HealthChecks;
use super::ids::EnvironmentName;
use super::rollout::{FailurePolicy, check_replicas};
use super::strategy::StrategySpec;
use crate::error::{Error, Result};
use crate::time::duration_ms;

/// The kind of an environment. Kinds carry no behaviour by themselves; policies (approvals,
/// backup schedules) key off them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvironmentKind {
    /// A developer's environment.
    Development,
    /// Pre-production.
    Staging,
    /// Serves real users.
    Production,
    /// An ephemeral environment for one branch or pull request.
    Preview,
    /// Anything else, by name (e.g. `qa`, `load-test`).
    Custom(String),
}

impl fmt::Display for EnvironmentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvironmentKind::Development => f.write_str("development"),
            EnvironmentKind::Staging => f.write_str("staging"),
            EnvironmentKind::Production => f.write_str("production"),
            EnvironmentKind::Preview => f.write_str("preview"),
            EnvironmentKind::Custom(name) => f.write_str(name),
        }
    }
}

/// CPU and memory requests and limits for one instance. `None` leaves a value to the backend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct Resources {
    /// CPU request in millicores.
    #[builder(default, setter(strip_option))]
    pub cpu_request_millis: Option<u32>,
    /// CPU limit in millicores.
    #[builder(default, setter(strip_option))]
    pub cpu_limit_millis: Option<u32>,
    /// Memory request in MiB.
    #[builder(default, setter(strip_option))]
    pub memory_request_mib: Option<u32>,
    /// Memory limit in MiB.
    #[builder(default, setter(strip_option))]
    pub memory_limit_mib: Option<u32>,
}

impl Resources {
    pub(crate) fn validate(&self, field: &str) -> Result<()> {
        let pairs = [
            ("cpu", self.cpu_request_millis, self.cpu_limit_millis),
            ("memory", self.memory_request_mib, self.memory_limit_mib),
        ];
        for (what, request, limit) in pairs {
            if let (Some(r), Some(l)) = (request, limit)
                && r > l
            {
                return Err(Error::invalid(
                    format!("{field}.{what}_request"),
                    format!("request {r} is above the limit {l}"),
                ));
            }
            if limit == Some(0) {
                return Err(Error::invalid(
                    format!("{field}.{what}_limit"),
                    "a limit of 0 leaves nothing to run with",
                ));
            }
        }
        Ok(())
    }

    /// `self` with every value set in `overrides` replaced.
    pub fn overlay(&self, overrides: &Resources) -> Resources {
        Resources {
            cpu_request_millis: overrides.cpu_request_millis.or(self.cpu_request_millis),
            cpu_limit_millis: overrides.cpu_limit_millis.or(self.cpu_limit_millis),
            memory_request_mib: overrides.memory_request_mib.or(self.memory_request_mib),
            memory_limit_mib: overrides.memory_limit_mib.or(self.memory_limit_mib),
        }
    }
}

/// Horizontal autoscaling bounds (`autoscale = { min_replicas, max_replicas,
/// target_cpu_percent }` under `[environments.<env>]` in `deploykit.toml`).
///
/// The orchestrator passes them on with every desired state it applies
/// ([`DesiredState::autoscale`](crate::DesiredState::autoscale)); a backend with an autoscaler
/// (Kubernetes: a HorizontalPodAutoscaler on the serving revision) keeps it running with them,
/// and reports the count it wants ([`Observed::autoscaled`](crate::Observed::autoscaled)).
/// Rollouts are then sized from that live count instead of the environment's `replicas`
/// (which still sizes a rollout before the autoscaler has a count, such as the first one), so
/// a deploy under load never shrinks the stable revision. Backends without an autoscaler
/// ignore them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct Autoscale {
    /// Fewest instances.
    pub min_replicas: u32,
    /// Most instances.
    pub max_replicas: u32,
    /// Target average CPU utilisation in percent (default 80).
    #[builder(default = 80)]
    pub target_cpu_percent: u32,
}

/// Everything about one environment: its size, resources, health-check overrides, rollout
/// parameters, deadlines and variables.
///
/// ```
/// use deploykit_core::{EnvironmentKind, EnvironmentSpec};
/// let prod = EnvironmentSpec::builder()
///     .name("production")
///     .kind(EnvironmentKind::Production)
///     .replicas(4)
///     .build()?;
/// assert_eq!(prod.progress_deadline.as_secs(), 600);
/// assert_eq!(prod.revision_history_limit, 10);
/// # Ok::<(), deploykit_core::Error>(())
/// ```
///
/// Deserialised specs are validated exactly as built ones are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, TypedBuilder)]
#[serde(remote = "Self")]
#[builder(build_method(into = Result<EnvironmentSpec>))]
#[non_exhaustive]
pub struct EnvironmentSpec {
    /// The environment's name; the builder takes a string and validates it in `build`.
    #[builder(setter(transform = |name: impl Into<String>| EnvironmentName::unchecked(name.into())))]
    pub name: EnvironmentName,
    /// Its kind.
    pub kind: EnvironmentKind,
    /// Desired instances per service (default 1).
    #[builder(default = 1)]
    pub replicas: u32,
    /// Autoscaling bounds, if the backend autoscales.
    #[builder(default, setter(strip_option))]
    pub autoscale: Option<Autoscale>,
    /// Resource overrides on top of the service's own.
    #[builder(default)]
    pub resources: Resources,
    /// Health checks that replace the service's own in this environment.
    #[builder(default, setter(strip_option))]
    pub health: Option<HealthChecks>,
    /// How deployments roll out (default: a rolling update with Kubernetes' defaults).
    #[builder(default)]
    pub strategy: StrategySpec,
    /// What a deployment does when a rollback trigger fires (default: roll back).
    #[builder(default)]
    pub failure_policy: FailurePolicy,
    /// A deployment that makes no progress for this long is rolled back (default 600 s).
    #[builder(default = Duration::from_secs(600))]
    #[serde(with = "duration_ms", rename = "progress_deadline_ms")]
    pub progress_deadline: Duration,
    /// How many earlier revisions are kept for rollback (default 10).
    #[builder(default = 10)]
    pub revision_history_limit: u32,
    /// Environment-specific variables, layered over the service's.
    #[builder(default)]
    pub variables: BTreeMap<String, String>,
    /// Environment-specific secrets, layered over the service's: variable name → secret key
    /// path. Only the reference is stored; see [`crate::secrets`].
    #[builder(default)]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
}

crate::validate::validated_serde!(EnvironmentSpec, EnvironmentSpec::validate);

impl From<EnvironmentSpec> for Result<EnvironmentSpec> {
    fn from(spec: EnvironmentSpec) -> Self {
        spec.validate()?;
        Ok(spec)
    }
}

impl EnvironmentSpec {
    /// Check the spec as its builder and deserialiser do (for a spec edited after building);
    /// the error names the field (`environment.replicas`).
    pub fn validate(&self) -> Result<()> {
        EnvironmentName::new(self.name.as_str())?;
        self.resources.validate("environment.resources")?;
        self.strategy.validate("environment.strategy")?;
        super::ids::check_secret_refs("environment.secrets", &self.secrets)?;
        if let Some(h) = &self.health {
            h.validate("environment.health")?;
        }
        if let Some(a) = &self.autoscale {
            if a.min_replicas == 0 {
                return Err(Error::invalid(
                    "environment.autoscale.min_replicas",
                    "must be at least 1",
                ));
            }
            if a.min_replicas > a.max_replicas {
                return Err(Error::invalid(
                    "environment.autoscale.min_replicas",
                    format!(
                        "{} is above max_replicas {}",
                        a.min_replicas, a.max_replicas
                    ),
                ));
            }
            if !(1..=100).contains(&a.target_cpu_percent) {
                return Err(Error::invalid(
                    "environment.autoscale.target_cpu_percent",
                    format!("{} is outside 1-100", a.target_cpu_percent),
                ));
            }
            if !(a.min_replicas..=a.max_replicas).contains(&self.replicas) {
                return Err(Error::invalid(
                    "environment.replicas",
                    format!(
                        "{} is outside the autoscale bounds {}-{}",
                        self.replicas, a.min_replicas, a.max_replicas
                    ),
                ));
            }
        }
        check_progress_deadline("environment.progress_deadline", self.progress_deadline)?;
        check_replicas("environment.replicas", self.replicas)?;
        if self.revision_history_limit > MAX_REVISION_HISTORY {
            return Err(Error::invalid(
                "environment.revision_history_limit",
                format!(
                    "{} is above {MAX_REVISION_HISTORY}",
                    self.revision_history_limit
                ),
            ));
        }
        Ok(())
    }
}

/// A progress deadline is 1 s to 7 days.
pub(crate) fn check_progress_deadline(field: &str, deadline: Duration) -> Result<()> {
    crate::validate::check_duration(
        field,
        deadline,
        Duration::from_secs(1),
        crate::time::DAY * 7,
    )
}

/// The most earlier revisions an environment keeps for rollback.
pub const MAX_REVISION_HISTORY: u32 = 1_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::health::{Probe, ProbeAction};
    use crate::model::rollout::{Quantity, RollingSpec};

    macro_rules! base {
        () => {
            EnvironmentSpec::builder()
                .name("staging")
                .kind(EnvironmentKind::Staging)
        };
    }

    fn field(r: Result<EnvironmentSpec>) -> String {
        match r {
            Err(Error::InvalidSpec { field, .. }) => field,
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let e = base!().build().unwrap();
        assert_eq!(e.replicas, 1);
        assert_eq!(e.strategy, StrategySpec::default());
        assert_eq!(e.kind.to_string(), "staging");
    }

    #[test]
    fn invalid_environments_name_the_field() {
        let r = EnvironmentSpec::builder()
            .name("Prod!")
            .kind(EnvironmentKind::Production)
            .build();
        assert_eq!(field(r), "environment.name");
        let gate = HealthChecks::builder()
            .readiness(
                Probe::builder()
                    .action(ProbeAction::http("/up"))
                    .build()
                    .unwrap(),
            )
            .build();
        assert_eq!(
            field(base!().replicas(0).health(gate).build()),
            "environment.replicas"
        );
        let rollout = RollingSpec {
            max_surge: Quantity::Count(0),
            max_unavailable: Quantity::Count(0),
            fail_fast_after: 3,
        };
        assert_eq!(
            field(base!().strategy(StrategySpec::Rolling(rollout)).build()),
            "environment.strategy.rolling.max_surge"
        );
        let res = Resources::builder()
            .cpu_request_millis(500)
            .cpu_limit_millis(100)
            .build();
        assert_eq!(
            field(base!().resources(res).build()),
            "environment.resources.cpu_request"
        );
        let auto = Autoscale::builder().min_replicas(5).max_replicas(2).build();
        assert_eq!(
            field(base!().autoscale(auto).build()),
            "environment.autoscale.min_replicas"
        );
        let auto = Autoscale::builder().min_replicas(2).max_replicas(4).build();
        assert_eq!(
            field(base!().replicas(1).autoscale(auto).build()),
            "environment.replicas"
        );
        assert_eq!(
            field(base!().progress_deadline(Duration::ZERO).build()),
            "environment.progress_deadline"
        );
    }
}
