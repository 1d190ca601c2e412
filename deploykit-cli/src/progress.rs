//! Following a deployment: each journal event as a line, and a spinner with the current step,
//! the traffic split and ready instances.

use std::time::{Duration, Instant};

use deploykit_core::{DeploymentId, DeploymentStatus, Environment, Orchestrator, Result};
use deploykit_local::LocalClient;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::broadcast::error::RecvError;

/// Follows one deployment to its end.
pub(crate) struct Follow {
    show: bool,
}

impl Follow {
    /// Show progress on the terminal, or stay quiet (JSON output).
    pub(crate) fn new(show: bool) -> Self {
        Follow { show }
    }

    /// Wait until `id` ends, printing its events as they happen.
    pub(crate) async fn run(
        &self,
        orchestrator: &Orchestrator,
        client: &LocalClient,
        id: &DeploymentId,
    ) -> Result<DeploymentStatus> {
        let mut events = orchestrator.subscribe();
        let bar = if self.show {
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
        let started = Instant::now();
        let status = orchestrator.status(id).await?;
        let service = status.spec.service.clone();
        let mut phase = status.phase;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            if phase.is_terminal() {
                break;
            }
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) if &event.deployment == id => {
                        phase = event.phase;
                        bar.println(format!(
                            "{:>6.1}s  {} {}  {}",
                            started.elapsed().as_secs_f64(),
                            event.service,
                            event.revision,
                            event.description()
                        ));
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                },
                _ = tick.tick() => {
                    phase = orchestrator.status(id).await?.phase;
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
