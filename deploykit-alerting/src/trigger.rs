//! Alerts as rollback triggers: "roll back if alert X fires for this revision".

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::{Alert, AlertState, AlertTarget, Alerting};
use deploykit_core::Orchestrator;
use deploykit_core::event::Event;
use deploykit_core::journal::{Actor, DeploymentStatus, Phase};
use deploykit_core::model::{DeploymentId, EnvironmentName, RevisionId, ServiceId};

/// Watch every revision the orchestrator rolls out with `alerting`'s rules, and abort (so roll
/// back, under the default failure policy) a deployment when one of `alerts` fires for its
/// revision. The abort is an operator action by `alert:<alertname>`: with an access policy,
/// bind that principal to a role that may abort (e.g. `policy.bind("alert:canary-errors",
/// "role:release")`).
///
/// A revision is watched while a deployment rolling it out has started and not finished. The
/// set of watched revisions does not depend on having seen each deployment's `started` event:
///
/// - on start, the task reads the active deployments from the store, so deployments resumed
///   by [`deploykit_core::OrchestratorBuilder::open`] (or driven by another orchestrator on the same store) are
///   watched, and acts on the named alerts already firing;
/// - any event of a deployment it does not watch yet (an adopted one, say) makes it look the
///   deployment up;
/// - when its receiver of deployment events lags (events were dropped), it reads the active
///   deployments from the store again; when its receiver of alert events lags, it acts on
///   every named alert firing now, so a dropped firing event still rolls back.
///
/// The task runs until the orchestrator or the alerting engine goes away.
pub fn rollback_on_alerts(
    orchestrator: Arc<Orchestrator>,
    alerting: Arc<Alerting>,
    alerts: impl IntoIterator<Item = impl Into<String>>,
) -> JoinHandle<()> {
    let names: BTreeSet<String> = alerts.into_iter().map(Into::into).collect();
    // Subscribe before reading the store, so nothing falls between the two.
    let mut deployments = orchestrator.subscribe();
    let mut fired = alerting.subscribe();
    let mut trigger = Trigger {
        orchestrator,
        alerting,
        names,
        watched: BTreeMap::new(),
    };
    tokio::spawn(async move {
        trigger.resync().await;
        trigger.act_on_firing().await;
        loop {
            tokio::select! {
                event = deployments.recv() => match event {
                    Ok(event) => trigger.on_deployment_event(&event).await,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "rollback trigger missed deployment events; re-reading the active deployments");
                        trigger.resync().await;
                    }
                    Err(RecvError::Closed) => return,
                },
                event = fired.recv() => match event {
                    Ok(event) if event.is_firing() => trigger.roll_back(&event.alert).await,
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "rollback trigger missed alert events; acting on the alerts firing now");
                        trigger.act_on_firing().await;
                    }
                    Err(RecvError::Closed) => return,
                },
            }
        }
    })
}

/// The state of one [`rollback_on_alerts`] task.
struct Trigger {
    orchestrator: Arc<Orchestrator>,
    alerting: Arc<Alerting>,
    names: BTreeSet<String>,
    /// The deployments whose revisions this task watches, with their alert targets.
    watched: BTreeMap<DeploymentId, AlertTarget>,
}

/// The alert target of a deployment that has started and not finished.
fn running_target(status: &DeploymentStatus) -> Option<AlertTarget> {
    let running = !status.phase.is_terminal() && status.phase != Phase::Pending;
    running.then(|| {
        AlertTarget::new(status.spec.service.clone(), status.spec.environment.clone())
            .with_revision(status.spec.target.id.clone())
    })
}

impl Trigger {
    async fn on_deployment_event(&mut self, event: &Event) {
        if event.phase.is_terminal() {
            self.unwatch(&event.deployment);
            return;
        }
        if event.phase == Phase::Pending || self.watched.contains_key(&event.deployment) {
            return;
        }
        match self.orchestrator.status(&event.deployment).await {
            Ok(status) => {
                if let Some(target) = running_target(&status) {
                    self.watch(event.deployment.clone(), target);
                }
            }
            Err(e) => {
                tracing::warn!(deployment = %event.deployment, error = %e.chain(), "rollback trigger could not read a deployment; re-reading the active deployments");
                self.resync().await;
            }
        }
    }

    /// Watch exactly the revisions of the active deployments that have started.
    async fn resync(&mut self) {
        let active = match self.orchestrator.active_deployments().await {
            Ok(active) => active,
            Err(e) => {
                tracing::warn!(error = %e.chain(), "rollback trigger could not list the active deployments");
                return;
            }
        };
        let running: BTreeMap<DeploymentId, AlertTarget> = active
            .iter()
            .filter_map(|s| Some((s.spec.id.clone(), running_target(s)?)))
            .collect();
        let gone: Vec<DeploymentId> = self
            .watched
            .keys()
            .filter(|id| !running.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            self.unwatch(&id);
        }
        for (id, target) in running {
            self.watch(id, target);
        }
    }

    fn watch(&mut self, deployment: DeploymentId, target: AlertTarget) {
        self.alerting.watch(target.clone());
        self.watched.insert(deployment, target);
    }

    /// Stop watching `deployment`'s revision unless another watched deployment rolls it out.
    fn unwatch(&mut self, deployment: &DeploymentId) {
        if let Some(target) = self.watched.remove(deployment)
            && !self.watched.values().any(|t| *t == target)
        {
            self.alerting.unwatch(&target);
        }
    }

    /// Roll back for every named alert firing now.
    async fn act_on_firing(&self) {
        for alert in self.alerting.alerts() {
            if alert.state == AlertState::Firing {
                self.roll_back(&alert).await;
            }
        }
    }

    /// Abort the deployments of the revision `alert` fired for, if it is one of the named
    /// alerts and carries a revision's labels.
    async fn roll_back(&self, alert: &Alert) {
        if !self.names.contains(alert.name()) {
            return;
        }
        let (Some(service), Some(environment), Some(revision)) = (
            alert.label("service"),
            alert.label("environment"),
            alert.label("revision"),
        ) else {
            return;
        };
        let (Ok(service), Ok(environment), Ok(revision)) = (
            ServiceId::new(service),
            EnvironmentName::new(environment),
            RevisionId::parse(revision),
        ) else {
            return;
        };
        let detail = alert
            .annotations
            .get("summary")
            .cloned()
            .unwrap_or_else(|| {
                alert
                    .value
                    .map_or("no value".into(), |v| format!("value {v}"))
            });
        let reason = format!("alert {} fired ({detail})", alert.name());
        let by = Actor::new(format!("alert:{}", alert.name()));
        match self
            .orchestrator
            .abort_revision(&service, &environment, &revision, by, reason)
            .await
        {
            Ok(ids) if !ids.is_empty() => {
                tracing::warn!(alert = alert.name(), deployments = ?ids, "alert rolled deployments back");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(alert = alert.name(), error = %e.chain(), "alert could not roll back");
            }
        }
    }
}
