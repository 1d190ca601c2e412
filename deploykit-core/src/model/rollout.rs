//! Rollout parameters: instance counts, surge and unavailability budgets, traffic weights.

use std::fmt;

use serde::{Deserialize, Serialize};
use typed_builder::TypedBuilder;

use crate::error::{Error, Result};

/// A count of instances or a percentage of the desired replicas, as Kubernetes' `IntOrString`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantity {
    /// An absolute number of instances.
    Count(u32),
    /// A percentage (0–100) of the desired replicas.
    Percent(u32),
}

impl Quantity {
    /// The quantity for `replicas` desired instances, rounding a percentage up or down.
    pub fn resolve(self, replicas: u32, round_up: bool) -> u32 {
        match self {
            Quantity::Count(n) => n,
            Quantity::Percent(p) => {
                let scaled = u64::from(replicas) * u64::from(p);
                let v = if round_up {
                    scaled.div_ceil(100)
                } else {
                    scaled / 100
                };
                v as u32
            }
        }
    }

    fn validate(self, field: &str) -> Result<()> {
        if let Quantity::Percent(p) = self
            && p > 100
        {
            return Err(Error::invalid(field, format!("{p}% is outside 0-100%")));
        }
        Ok(())
    }

    fn is_zero(self) -> bool {
        matches!(self, Quantity::Count(0) | Quantity::Percent(0))
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quantity::Count(n) => write!(f, "{n}"),
            Quantity::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Parameters of a rolling update, with Kubernetes' semantics and defaults.
///
/// ```
/// use deploykit_core::{Quantity, RollingSpec};
/// let spec = RollingSpec::builder().max_surge(Quantity::Count(1)).build()?;
/// // maxSurge rounds up, maxUnavailable rounds down: 25% of 3 is 0 unavailable.
/// assert_eq!(spec.budgets(3), (1, 0));
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[serde(remote = "Self")]
#[builder(build_method(into = Result<RollingSpec>))]
#[non_exhaustive]
pub struct RollingSpec {
    /// How many instances above the desired count may exist during the update (default 25 %,
    /// rounded up).
    #[builder(default = Quantity::Percent(25))]
    pub max_surge: Quantity,
    /// How many instances below the desired count may be unavailable during the update
    /// (default 25 %, rounded down).
    #[builder(default = Quantity::Percent(25))]
    pub max_unavailable: Quantity,
    /// Roll back without waiting for the deadline once this many new instances show evidence
    /// of a broken revision (exits and crash loops, liveness, startup or configuration
    /// failures; failing readiness only means "not ready yet"), or once every new instance
    /// does (default 3).
    #[builder(default = 3)]
    pub fail_fast_after: u32,
}

crate::validate::validated_serde!(RollingSpec, |r| r.validate("rolling"));

impl Default for RollingSpec {
    fn default() -> Self {
        RollingSpec {
            max_surge: Quantity::Percent(25),
            max_unavailable: Quantity::Percent(25),
            fail_fast_after: 3,
        }
    }
}

impl From<RollingSpec> for Result<RollingSpec> {
    fn from(s: RollingSpec) -> Self {
        s.validate("rollout")?;
        Ok(s)
    }
}

impl RollingSpec {
    /// `(surge, unavailable)` in instances for `replicas` desired instances: surge rounds up,
    /// unavailable rounds down. If both come out as 0 (possible only with percentages),
    /// unavailable becomes 1, as Kubernetes does, so the update can always progress.
    pub fn budgets(&self, replicas: u32) -> (u32, u32) {
        let surge = self.max_surge.resolve(replicas, true);
        let unavailable = self.max_unavailable.resolve(replicas, false).min(replicas);
        if surge == 0 && unavailable == 0 {
            (0, 1)
        } else {
            (surge, unavailable)
        }
    }

    pub(crate) fn validate(&self, field: &str) -> Result<()> {
        self.max_surge.validate(&format!("{field}.max_surge"))?;
        self.max_unavailable
            .validate(&format!("{field}.max_unavailable"))?;
        if self.max_surge.is_zero() && self.max_unavailable.is_zero() {
            return Err(Error::invalid(
                format!("{field}.max_surge"),
                "max_surge and max_unavailable are both 0: the update could never make progress",
            ));
        }
        if self.fail_fast_after == 0 {
            return Err(Error::invalid(
                format!("{field}.fail_fast_after"),
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// What a deployment does when a rollback trigger fires (failed analysis, failed health checks,
/// the progress deadline, a crash loop, an environment error). An operator's abort always rolls
/// back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Return to the previous revision (the default).
    #[default]
    Rollback,
    /// Stop where it is and keep traffic as it is: for releases with irreversible migrations.
    /// The deployment ends as `frozen`; an operator decides what comes next.
    Freeze,
    /// Hold for a human (gate `failure`): approving carries on, rejecting rolls back.
    Pause,
}

/// A traffic weight in percent, 0–100.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Weight(u8);

impl Weight {
    /// Validates a weight; anything above 100 is an [`Error::InvalidSpec`] naming `weight`.
    pub fn new(percent: u32) -> Result<Self> {
        if percent > 100 {
            return Err(Error::invalid(
                "weight",
                format!("{percent} is outside 0-100"),
            ));
        }
        Ok(Weight(percent as u8))
    }

    /// A weight from a percentage known to be in range; values above 100 become 100.
    pub(crate) fn clamped(percent: u32) -> Self {
        Weight(percent.min(100) as u8)
    }

    /// The weight in percent.
    pub fn percent(self) -> u32 {
        u32::from(self.0)
    }
}

impl TryFrom<u32> for Weight {
    type Error = Error;
    fn try_from(p: u32) -> Result<Self> {
        Weight::new(p)
    }
}

impl From<Weight> for u32 {
    fn from(w: Weight) -> u32 {
        w.percent()
    }
}

/// The most instances one revision may ask for in one environment.
pub const MAX_REPLICAS: u32 = 10_000;

/// Replicas are 1 to [`MAX_REPLICAS`]: with none, a deployment would "succeed" with nothing
/// serving.
pub(crate) fn check_replicas(field: &str, replicas: u32) -> Result<()> {
    if replicas == 0 {
        return Err(Error::invalid(
            field,
            format!(
                "0 is outside 1-{MAX_REPLICAS}: a deployment with no instances would \
                 \"succeed\" with nothing serving (tear the service down instead)"
            ),
        ));
    }
    if replicas > MAX_REPLICAS {
        return Err(Error::invalid(
            field,
            format!(
                "{replicas} is outside 1-{MAX_REPLICAS}: more instances than one revision may ask for"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(surge: Quantity, unavailable: Quantity) -> RollingSpec {
        RollingSpec {
            max_surge: surge,
            max_unavailable: unavailable,
            fail_fast_after: 3,
        }
    }

    #[test]
    fn percentages_round_like_kubernetes() {
        let s = RollingSpec::default();
        // 25% of 10 = 2.5: surge rounds up to 3, unavailable down to 2.
        assert_eq!(s.budgets(10), (3, 2));
        assert_eq!(s.budgets(4), (1, 1));
        assert_eq!(s.budgets(3), (1, 0));
        assert_eq!(s.budgets(1), (1, 0));
        assert_eq!(s.budgets(0), (0, 1));
        let s = spec(Quantity::Percent(10), Quantity::Percent(10));
        assert_eq!(s.budgets(5), (1, 0));
        let s = spec(Quantity::Percent(0), Quantity::Percent(10));
        // 10% of 5 rounds down to 0 and surge is 0: unavailable becomes 1.
        assert_eq!(s.budgets(5), (0, 1));
        let s = spec(Quantity::Count(2), Quantity::Count(7));
        // Unavailable never exceeds the desired count.
        assert_eq!(s.budgets(5), (2, 5));
        let s = spec(Quantity::Percent(100), Quantity::Percent(0));
        assert_eq!(s.budgets(7), (7, 0));
    }

    #[test]
    fn impossible_specs_are_rejected() {
        let err = RollingSpec::builder()
            .max_surge(Quantity::Count(0))
            .max_unavailable(Quantity::Percent(0))
            .build()
            .unwrap_err();
        assert!(matches!(&err, Error::InvalidSpec { field, .. } if field == "rollout.max_surge"));
        let err = RollingSpec::builder()
            .max_unavailable(Quantity::Percent(101))
            .build()
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidSpec { field, .. } if field == "rollout.max_unavailable")
        );
        let err = RollingSpec::builder()
            .fail_fast_after(0)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("rollout.fail_fast_after"));
    }

    #[test]
    fn weights_stay_within_0_to_100() {
        assert_eq!(Weight::new(100).unwrap().percent(), 100);
        let err = Weight::new(101).unwrap_err();
        assert_eq!(err.to_string(), "invalid weight: 101 is outside 0-100");
        assert!(serde_json::from_str::<Weight>("150").is_err());
    }
}
