//! The [`Monitor`] trait: the sensor for instance health and metrics.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::environment::InstanceObservation;
use crate::error::Result;
use crate::model::{RevisionId, ServiceId};
use crate::time::Timestamp;

/// A metric query, scoped to a service and optionally one revision.
///
/// `expr` is in the monitor's own language (PromQL for a Prometheus monitor, a series name for
/// the in-memory one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MetricQuery {
    /// The service.
    pub service: ServiceId,
    /// The revision, or `None` for the whole service.
    pub revision: Option<RevisionId>,
    /// The query expression.
    pub expr: String,
    /// How far back to look; `None` for an instant query.
    pub range: Option<Duration>,
}

impl MetricQuery {
    /// An instant query of `expr` for `service`.
    pub fn new(service: ServiceId, expr: impl Into<String>) -> Self {
        MetricQuery {
            service,
            revision: None,
            expr: expr.into(),
            range: None,
        }
    }

    /// The same query scoped to one revision.
    pub fn for_revision(mut self, revision: RevisionId) -> Self {
        self.revision = Some(revision);
        self
    }

    /// The same query over a range.
    pub fn over(mut self, range: Duration) -> Self {
        self.range = Some(range);
        self
    }
}

/// One metric value at a point in time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When it was measured.
    pub at: Timestamp,
    /// The value (may be NaN or infinite if the source says so: see [`MonitorExt::latest`]).
    pub value: f64,
}

/// The sensor: instance health and metric queries.
#[async_trait]
pub trait Monitor: Send + Sync + fmt::Debug {
    /// Health of every instance of one revision of a service.
    async fn instance_health(
        &self,
        service: &ServiceId,
        revision: &RevisionId,
    ) -> Result<Vec<InstanceObservation>>;

    /// Samples for `query`, oldest first. An empty vector means the source has no data.
    async fn query(&self, query: &MetricQuery) -> Result<Vec<Sample>>;
}

/// Conveniences over any [`Monitor`].
#[async_trait]
pub trait MonitorExt: Monitor {
    /// The newest finite value of `query`, or `None` for "no data": an empty result, NaN and
    /// ±infinity are never a value (a NaN must never pass an analysis).
    async fn latest(&self, query: &MetricQuery) -> Result<Option<f64>> {
        let samples = self.query(query).await?;
        Ok(samples.last().map(|s| s.value).filter(|v| v.is_finite()))
    }
}

impl<T: Monitor + ?Sized> MonitorExt for T {}
