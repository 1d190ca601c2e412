//! The agent's state as metrics an alert rule can query, and the rules it ships.
//!
//! The alerting engine (`deploykit-alerting`) evaluates rules over a [`Monitor`]; it has no
//! other way in. So the agent does not push alerts: it answers queries for its own gauges
//! ([`AgentMonitor`]), and [`alert_rules`] fire on them. Routing, grouping, silences,
//! inhibition, escalation and the notifiers (webhooks, …) are then the engine's, as for every
//! other alert, and the same rules work unchanged in Prometheus on the scraped gauges (see
//! [`super::Agent::encode_metrics`]).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use deploykit_alerting::{AlertRule, environment_selector, labels};
use deploykit_core::analysis::Condition;
use deploykit_core::environment::InstanceObservation;
use deploykit_core::model::{RevisionId, ServiceId};
use deploykit_core::monitor::{MetricQuery, Monitor, Sample};
use deploykit_core::time::{Clock, Timestamp};
use deploykit_core::{Error, Result};

use super::state::AgentState;

/// Duties whose last run failed, per environment.
pub const FAILING: &str = "deploykit_backup_agent_failing_duties";
/// Duties that missed runs not yet followed by a run on time that succeeded, per environment.
pub const MISSED: &str = "deploykit_backup_agent_missed_duties";
/// Duties overdue (due, not run, not running), per environment.
pub const OVERDUE: &str = "deploykit_backup_agent_overdue_duties";

/// The rules the agent ships, one per gauge, for every watched environment (service
/// `backup`): `BackupRunFailed` (critical), `BackupRunMissed` (warning), `BackupOverdue`
/// (critical). Each fires at once when its gauge is above 0 and resolves when it is 0 again.
pub fn alert_rules() -> Vec<AlertRule> {
    let rule = |name: &str, metric: &str, severity: &str, summary: &str| {
        AlertRule::builder()
            .name(name)
            .expr(format!("{metric}{{environment=\"{{{{environment}}}}\"}}"))
            .condition(Condition::above(0.0))
            .labels(labels([("severity", severity)]))
            .annotations(labels([
                ("summary", summary),
                (
                    "hint",
                    "see `deploykit backup status --env {{environment}}`",
                ),
            ]))
            .build()
            .expect("the agent's rules are valid")
    };
    vec![
        rule(
            "BackupRunFailed",
            FAILING,
            "critical",
            "{{value}} backup dut(ies) of {{environment}} failed their last run",
        ),
        rule(
            "BackupRunMissed",
            MISSED,
            "warning",
            "{{value}} backup dut(ies) of {{environment}} missed runs while the agent was down",
        ),
        rule(
            "BackupOverdue",
            OVERDUE,
            "critical",
            "{{value}} backup dut(ies) of {{environment}} are overdue",
        ),
    ]
}

/// The agent's gauges, for alert rules: `FAILING`, `MISSED` and `OVERDUE` with an
/// `environment="<name>"` selector (e.g.
/// `deploykit_backup_agent_failing_duties{environment="prod"}`).
/// Any other query is an error; an environment the agent does not run has no data.
#[derive(Debug, Clone)]
pub struct AgentMonitor {
    state: Arc<Mutex<AgentState>>,
    clock: Arc<dyn Clock>,
}

impl AgentMonitor {
    pub(super) fn new(state: Arc<Mutex<AgentState>>, clock: Arc<dyn Clock>) -> Self {
        AgentMonitor { state, clock }
    }

    /// The value of gauge `metric` for `environment`, `None` when the agent does not run it.
    pub fn value(&self, metric: &str, environment: &str) -> Option<f64> {
        let now = self.clock.now();
        gauge(
            &self.state.lock().expect("agent state lock"),
            metric,
            environment,
            now,
        )
    }
}

/// How many of `environment`'s duties are in the state gauge `metric` names at `now`.
pub(super) fn gauge(
    state: &AgentState,
    metric: &str,
    environment: &str,
    now: Timestamp,
) -> Option<f64> {
    let env = state.environments.get(environment)?;
    let alive = state.agent.as_ref().is_some_and(|a| a.is_alive(now));
    let count = env
        .duties
        .values()
        .filter(|d| match metric {
            FAILING => d.failing,
            MISSED => d.miss_unresolved,
            OVERDUE => d.overdue_after.is_some_and(|t| now > t) && !(alive && d.running.is_some()),
            _ => false,
        })
        .count();
    Some(count as f64)
}

#[async_trait]
impl Monitor for AgentMonitor {
    async fn instance_health(
        &self,
        _service: &ServiceId,
        _revision: &RevisionId,
    ) -> Result<Vec<InstanceObservation>> {
        Ok(Vec::new())
    }

    async fn query(&self, query: &MetricQuery) -> Result<Vec<Sample>> {
        let (metric, environment) = environment_selector(&query.expr)
            .filter(|(m, _)| [FAILING, MISSED, OVERDUE].contains(m))
            .ok_or_else(|| {
                Error::invalid(
                    "alert.expr",
                    format!(
                        "{:?}: the backup agent answers {FAILING}, {MISSED} and {OVERDUE} with \
                         an environment=\"…\" selector",
                        query.expr
                    ),
                )
            })?;
        Ok(self
            .value(metric, environment)
            .map(|value| Sample {
                at: self.clock.now(),
                value,
            })
            .into_iter()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_query_the_gauges() {
        let rules = alert_rules();
        assert_eq!(rules.len(), 3);
        assert!(
            rules[0].expr.starts_with(
                "deploykit_backup_agent_failing_duties{environment=\"{{environment}}\"}"
            )
        );
    }
}
