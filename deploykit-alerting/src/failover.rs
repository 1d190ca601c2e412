//! Failovers that stand still, as a gauge alert rules fire on: how a stalled failover is
//! escalated through the alerting engine.
//!
//! A failover's journal says which step runs and since when (see
//! `deploykit_core::failover::FailoverStatus::stalled`). [`FailoverMonitor`] answers the gauge
//! [`STALLED`] from the journal in the state store, so it sees a step that keeps failing as
//! well as a failover whose process died mid-step (which journals nothing more), from any
//! process reading the same store. [`failover_rules`] fire on it; routing, grouping, silences,
//! acknowledgement and [`Escalation`](crate::Escalation) to further receivers are then the
//! engine's, as for every other alert.
//!
//! ```
//! # use std::sync::Arc;
//! # use deploykit_alerting::failover::{FailoverMonitor, failover_rules, target};
//! # use deploykit_alerting::{Alerting, Route};
//! # fn wire(failovers: Arc<deploykit_core::failover::Failovers>) -> deploykit_core::Result<()> {
//! let alerting = Arc::new(
//!     Alerting::builder()
//!         .rules(failover_rules())
//!         .route(Route::builder().receiver("stderr").build())
//!         .build()?,
//! );
//! alerting.watch(target("production")?);
//! let monitor = Arc::new(FailoverMonitor::new(failovers));
//! // alerting.spawn(monitor) evaluates it every interval.
//! # let _ = monitor; Ok(()) }
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use deploykit_core::analysis::Condition;
use deploykit_core::environment::InstanceObservation;
use deploykit_core::failover::Failovers;
use deploykit_core::model::{EnvironmentName, RevisionId, ServiceId};
use deploykit_core::monitor::{MetricQuery, Monitor, Sample};
use deploykit_core::time::{Clock, SystemClock};
use deploykit_core::{Error, Result};

use crate::{AlertRule, AlertTarget, environment_selector, labels};

/// Seconds the longest-stalled failover from an environment has stood still (0: none), per
/// environment: `deploykit_failover_stalled{environment="production"}`.
pub const STALLED: &str = "deploykit_failover_stalled";

/// The service name of the alert targets: `failover`.
pub const SERVICE: &str = "failover";

/// The target to watch for failovers from `environment` (service [`SERVICE`]).
pub fn target(environment: &str) -> Result<AlertTarget> {
    Ok(AlertTarget::new(
        ServiceId::new(SERVICE)?,
        EnvironmentName::new(environment)?,
    ))
}

/// `FailoverStalled` (critical): fires at once when a failover (or rehearsal) from the
/// environment has stood still for its `step_timeout`, and resolves when it moves on or ends.
pub fn failover_rules() -> Vec<AlertRule> {
    vec![
        AlertRule::builder()
            .name("FailoverStalled")
            .expr(format!("{STALLED}{{environment=\"{{{{environment}}}}\"}}"))
            .condition(Condition::above(0.0))
            .labels(labels([("severity", "critical")]))
            .annotations(labels([
                (
                    "summary",
                    "a failover from {{environment}} has stood still for {{value}} s, longer \
                     than its step_timeout",
                ),
                (
                    "hint",
                    "see `deploykit failover list` and the failover's report; `deploykit \
                     failover resume` takes over one whose process died",
                ),
            ]))
            .build()
            .expect("the failover rule is valid"),
    ]
}

/// Answers [`STALLED`] from the failover journal; any other query is an error.
#[derive(Debug)]
pub struct FailoverMonitor {
    failovers: Arc<Failovers>,
    clock: Arc<dyn Clock>,
}

impl FailoverMonitor {
    /// The gauge of the failovers `failovers` reads (any site will do: only the journal is
    /// read), on the system clock.
    pub fn new(failovers: Arc<Failovers>) -> Self {
        FailoverMonitor {
            failovers,
            clock: Arc::new(SystemClock),
        }
    }

    /// The same on `clock` (the one the failovers are stamped by, in tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Whole seconds the longest-stalled failover from `environment` has stood still, 0 when
    /// none has; an error when the journal cannot be read.
    pub async fn value(&self, environment: &str) -> Result<f64> {
        let longest = self
            .failovers
            .stalled()
            .await?
            .into_iter()
            .filter(|(status, _)| status.spec.from.as_str() == environment)
            .map(|(_, waited)| waited.as_secs())
            .max();
        Ok(longest.unwrap_or(0) as f64)
    }
}

#[async_trait]
impl Monitor for FailoverMonitor {
    async fn instance_health(
        &self,
        _service: &ServiceId,
        _revision: &RevisionId,
    ) -> Result<Vec<InstanceObservation>> {
        Ok(Vec::new())
    }

    async fn query(&self, query: &MetricQuery) -> Result<Vec<Sample>> {
        let environment = environment_selector(&query.expr)
            .filter(|(metric, _)| *metric == STALLED)
            .map(|(_, environment)| environment)
            .ok_or_else(|| {
                Error::invalid(
                    "alert.expr",
                    format!(
                        "{:?}: the failover monitor answers {STALLED} with an \
                         environment=\"…\" selector",
                        query.expr
                    ),
                )
            })?;
        Ok(vec![Sample {
            at: self.clock.now(),
            value: self.value(environment).await?,
        }])
    }
}
