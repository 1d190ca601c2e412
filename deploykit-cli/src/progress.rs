//! Following a deployment: each journal event as a line on stdout, and, when a person watches
//! (stderr is a terminal), a spinner on stderr with the current step, the traffic split and
//! ready instances. Piped or in CI, the same event lines are printed without the spinner.

use std::time::{Duration, Instant};

use deploykit_core::{
    DeploymentId, DeploymentStatus, Environment, Orchestrator, Phase, Result, StateStore,
};
use deploykit_local::LocalClient;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::broadcast::error::RecvError;

/// Follows one deployment to its end.
pub(crate) struct Follow {
    show: bool,
}

impl Follow {
    /// Print progress (text output), or stay quiet (JSON output).
    pub(crate) fn new(show: bool) -> Self {
        Follow { show }
    }

    /// Wait until `id` ends, printing its events as they happen.
    pub(crate) async fn run(
        &self,
        orchestrator: &Orchestrator,
        store: &dyn StateStore,
        client: &LocalClient,
        id: &DeploymentId,
    ) -> Result<DeploymentStatus> {
        let mut events = orchestrator.subscribe();
        let bar = if self.show && crate::out::interactive() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        } else {
            ProgressBar::hidden()
        };
        let say = |text: String| {
            if self.show {
                bar.suspend(|| crate::out::line(&text));
            }
        };
        let started = Instant::now();
        let line = |event: &deploykit_core::event::Event| {
            format!(
                "{:>6.1}s  {} {}  {}",
                started.elapsed().as_secs_f64(),
                event.service,
                event.revision,
                event.description()
            )
        };
        // What was journaled before the subscription (the request, its first steps) is read
        // back, so that no line is lost to that race; the bus then skips those entries.
        let mut said_up_to = None;
        if let Some(entries) = store.load(id).await? {
            for event in deploykit_core::event::timeline(&entries)? {
                said_up_to = Some(event.entry.seq);
                say(line(&event));
            }
        }
        let status = orchestrator.status(id).await?;
        let service = status.spec.service.clone();
        let environment = status.spec.environment.clone();
        let mut phase = status.phase;
        let mut said_why_pending = false;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            if phase.is_terminal() {
                break;
            }
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) if &event.deployment == id => {
                        phase = event.phase;
                        if said_up_to.is_none_or(|seq| event.entry.seq > seq) {
                            say(line(&event));
                        }
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                },
                _ = tick.tick() => {
                    phase = orchestrator.status(id).await?.phase;
                    if phase == Phase::Pending
                        && !said_why_pending
                        && started.elapsed() >= Duration::from_secs(1)
                    {
                        said_why_pending = true;
                        say(why_pending(orchestrator, store, id, &service, &environment).await);
                    }
                    if let Ok(observed) = client.observe(&service).await {
                        bar.set_message(format!(
                            "{phase}: {} | traffic {}",
                            observed.summary(),
                            traffic_summary(&observed)
                        ));
                    }
                }
            }
        }
        bar.finish_and_clear();
        orchestrator.wait(id).await
    }
}

/// Why a deployment has not started: the deployment of the same service and environment that
/// runs first, and who holds the lease.
async fn why_pending(
    orchestrator: &Orchestrator,
    store: &dyn StateStore,
    id: &DeploymentId,
    service: &deploykit_core::ServiceId,
    environment: &deploykit_core::EnvironmentName,
) -> String {
    let key = format!("{service}/{environment}");
    let ahead = orchestrator
        .active_deployments()
        .await
        .unwrap_or_default()
        .into_iter()
        .find(|s| {
            &s.spec.id != id && &s.spec.service == service && &s.spec.environment == environment
        });
    let lease = match store.lease(&key).await {
        Ok(Some(lease)) => format!(
            "; its lease is held by {} until {}",
            lease.owner, lease.expires_at
        ),
        _ => String::new(),
    };
    match ahead {
        Some(s) => format!(
            "        waiting: deployment {} of {} {} (requested by {}, {}) runs first; \
             deployments of {key} run one at a time{lease}",
            s.spec.id, s.spec.service, s.spec.target.label, s.spec.requested_by, s.phase
        ),
        None => format!("        waiting for the lease of {key}{lease}"),
    }
}

/// `v2 25%, v1 75%`: the traffic each revision is served, for people.
pub(crate) fn traffic_summary(observed: &deploykit_core::Observed) -> String {
    let parts: Vec<String> = observed
        .revisions
        .iter()
        .filter(|r| observed.weight_of(&r.revision.id) > 0)
        .map(|r| {
            format!(
                "{} {}%",
                r.revision.label,
                observed.weight_of(&r.revision.id)
            )
        })
        .collect();
    parts.join(", ")
}
