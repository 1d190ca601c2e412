//! Alerts as rollback triggers: "roll back if alert X fires for this revision".

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::{AlertTarget, Alerting};
use crate::journal::{Actor, JournalEvent};
use crate::model::{EnvironmentName, RevisionId, ServiceId};
use crate::orchestrator::Orchestrator;

/// Watch every revision the orchestrator rolls out with `alerting`'s rules, and abort (so roll
/// back, under the default failure policy) a deployment when one of `alerts` fires for its
/// revision. The abort is an operator action by `alert:<alertname>`: with an access policy,
/// bind that principal to a role that may abort (e.g. `policy.bind("alert:canary-errors",
/// "role:release")`).
///
/// Revisions are watched from the deployment's start and unwatched when it ends; the task
/// runs until the orchestrator or the alerting engine goes away.
pub fn rollback_on_alerts(
    orchestrator: Arc<Orchestrator>,
    alerting: Arc<Alerting>,
    alerts: impl IntoIterator<Item = impl Into<String>>,
) -> JoinHandle<()> {
    let names: BTreeSet<String> = alerts.into_iter().map(Into::into).collect();
    let mut deployments = orchestrator.subscribe();
    let mut fired = alerting.subscribe();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                event = deployments.recv() => match event {
                    Ok(event) => {
                        let target = AlertTarget::new(event.service.clone(), event.environment.clone());
                        match &event.entry.event {
                            JournalEvent::Started { .. } => {
                                if let Ok(status) = orchestrator.status(&event.deployment).await {
                                    alerting.watch(target.with_revision(status.spec.target.id.clone()));
                                }
                            }
                            JournalEvent::Finished { .. } => {
                                if let Ok(status) = orchestrator.status(&event.deployment).await {
                                    alerting.unwatch(&target.with_revision(status.spec.target.id.clone()));
                                }
                            }
                            _ => {}
                        }
                    }
                    Err(RecvError::Lagged(n)) => tracing::warn!(missed = n, "rollback trigger missed deployment events"),
                    Err(RecvError::Closed) => return,
                },
                event = fired.recv() => match event {
                    Ok(event) if event.is_firing() && names.contains(event.alert.name()) => {
                        let (Some(service), Some(environment), Some(revision)) =
                            (event.service(), event.environment(), event.revision())
                        else {
                            continue;
                        };
                        let (Ok(service), Ok(environment), Ok(revision)) = (
                            ServiceId::new(service),
                            EnvironmentName::new(environment),
                            RevisionId::parse(revision),
                        ) else {
                            continue;
                        };
                        let reason = format!(
                            "alert {} fired ({})",
                            event.alert.name(),
                            event.alert.annotations.get("summary").cloned().unwrap_or_else(|| {
                                event.alert.value.map_or("no value".into(), |v| format!("value {v}"))
                            })
                        );
                        let by = Actor::new(format!("alert:{}", event.alert.name()));
                        match orchestrator.abort_revision(&service, &environment, &revision, by, reason).await {
                            Ok(ids) if !ids.is_empty() => tracing::warn!(alert = event.alert.name(), deployments = ?ids, "alert rolled deployments back"),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(alert = event.alert.name(), error = %e.chain(), "alert could not roll back"),
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => tracing::warn!(missed = n, "rollback trigger missed alert events"),
                    Err(RecvError::Closed) => return,
                },
            }
        }
    })
}
