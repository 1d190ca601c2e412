//! A warm standby on local daemons (`[environments.<env>.standby] warm = N`): deploykit keeps
//! the standby environment's daemon running what the primary's serves (the same builds,
//! re-made with the standby's settings, at `warm` instances each), and a failover scales them
//! to the standby's `replicas`, points the primary's proxy at the standby's and checks that
//! requests through both reach a ready instance.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use deploykit_core::environment::{DesiredState, Observed, RevisionTarget, Routes, Traffic};
use deploykit_core::{
    Environment, EnvironmentExt, EnvironmentName, EnvironmentSpec, Error, ProbeAction, Result,
    Revision, ServiceId,
};
use deploykit_local::LocalClient;

use crate::context::Context;

/// The two daemons of a warm standby and what the standby runs.
#[derive(Debug)]
pub(crate) struct WarmStandby {
    /// The primary environment.
    pub(crate) from_env: EnvironmentName,
    /// The standby environment.
    pub(crate) to_env: EnvironmentName,
    /// The primary's daemon.
    pub(crate) from: LocalClient,
    /// The standby's daemon.
    pub(crate) to: LocalClient,
    /// The standby environment (its settings, replicas).
    pub(crate) to_spec: EnvironmentSpec,
    /// Instances per service while the standby waits.
    pub(crate) warm: u32,
    /// The services of the configuration.
    pub(crate) services: Vec<ServiceId>,
}

/// What one sync did for one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Synced {
    /// The standby already runs the primary's revision.
    InStep(String),
    /// The standby was given the primary's revision.
    Applied(String),
    /// Nothing to do, and why (the primary serves nothing, or the standby has taken over).
    Skipped(String),
}

impl WarmStandby {
    /// The warm standby of `from`, when its standby settings have `warm`.
    pub(crate) fn configured(
        ctx: &Context,
        from: &EnvironmentName,
        to: &EnvironmentName,
        warm: Option<u32>,
    ) -> Result<Option<WarmStandby>> {
        let Some(warm) = warm else {
            return Ok(None);
        };
        let config = ctx.config()?;
        Ok(Some(WarmStandby {
            from_env: from.clone(),
            to_env: to.clone(),
            from: ctx.client_for(from)?,
            to: ctx.client_for(to)?,
            to_spec: config.environment(to.as_str())?.clone(),
            warm,
            services: config.services().map(|s| s.name.clone()).collect(),
        }))
    }

    /// Bring the standby in step with the primary: for each service the primary serves, the
    /// standby runs the same build with its own settings at `warm` instances. Skipped while
    /// the primary's proxy forwards to another environment (it has been failed over: the
    /// standby is the one serving) or the standby runs more than `warm` instances.
    pub(crate) async fn sync(&self) -> Result<Vec<(ServiceId, Synced)>> {
        let info = self.from.info().await?;
        if let Some(to) = info.forward {
            return Ok(self
                .services
                .iter()
                .map(|s| {
                    (
                        s.clone(),
                        Synced::Skipped(format!(
                            "{}'s proxy forwards to {to}: it has been failed over",
                            self.from_env
                        )),
                    )
                })
                .collect());
        }
        let mut out = Vec::new();
        for service in &self.services {
            let primary = self.from.observe(service).await?;
            let Some(serving) = served(&primary) else {
                out.push((
                    service.clone(),
                    Synced::Skipped(format!("{} serves no revision of it", self.from_env)),
                ));
                continue;
            };
            let wanted = serving.in_environment(&self.to_spec)?;
            let standby = self.to.observe(service).await?;
            let running = standby.revisions.iter().map(|r| r.desired).max();
            if running.is_some_and(|n| n > self.warm) {
                out.push((
                    service.clone(),
                    Synced::Skipped(format!(
                        "{} runs {} instance(s), more than warm ({}): it serves",
                        self.to_env,
                        running.unwrap_or_default(),
                        self.warm
                    )),
                ));
                continue;
            }
            if let [only] = standby.revisions.as_slice()
                && only.revision.id == wanted.id
                && only.desired == self.warm
            {
                out.push((service.clone(), Synced::InStep(wanted.describe())));
                continue;
            }
            let what = wanted.describe();
            self.to
                .apply(service, &desired(Arc::new(wanted), self.warm))
                .await?;
            tracing::info!(%service, revision = %what, standby = %self.to_env, warm = self.warm, "standby brought in step");
            out.push((service.clone(), Synced::Applied(what)));
        }
        Ok(out)
    }

    /// Whether the standby can take over: its daemon answers and runs every service the
    /// primary serves (with a ready instance when warm); the detail names revisions that
    /// differ from the primary's (not refused: the primary may be gone).
    pub(crate) async fn readiness(&self) -> std::result::Result<String, String> {
        let info = self.to.info().await.map_err(|e| {
            format!(
                "the daemon of {} does not answer: {}",
                self.to_env,
                e.chain()
            )
        })?;
        let mut parts = Vec::new();
        for service in &self.services {
            // Warm instances still starting (a sync just gave them a new build), none ready and
            // none failed, are waited for a moment; ones that do not become ready make the
            // standby unhealthy.
            let deadline = tokio::time::Instant::now() + STARTING_GRACE;
            let standby = loop {
                let standby = self.to.observe(service).await.map_err(|e| e.chain())?;
                let starting = standby
                    .revisions
                    .last()
                    .is_some_and(|r| r.ready() == 0 && r.failed().next().is_none());
                if self.warm == 0 || !starting || tokio::time::Instant::now() >= deadline {
                    break standby;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let Some(current) = standby.revisions.last() else {
                return Err(format!(
                    "{} runs no revision of {service}: sync it first (`deploykit failover sync`)",
                    self.to_env
                ));
            };
            if self.warm > 0 && current.ready() == 0 {
                return Err(format!(
                    "{service} on {} has no ready instance after {STARTING_GRACE:?} ({})",
                    self.to_env,
                    standby.summary()
                ));
            }
            let mut part = format!(
                "{service} {} ({} ready)",
                current.revision.label,
                current.ready()
            );
            if let Ok(primary) = self.from.observe(service).await
                && let Some(serving) = served(&primary)
                && serving.label != current.revision.label
            {
                part.push_str(&format!(", but {} serves {}", self.from_env, serving.label));
            }
            parts.push(part);
        }
        Ok(format!(
            "{} proxy on {}: {}",
            self.to_env,
            info.proxy,
            parts.join(", ")
        ))
    }

    /// Scale each service on the standby to its `replicas`, serving all its traffic, and wait
    /// until every instance is ready (within `timeout`).
    pub(crate) async fn scale(&self, timeout: Duration) -> Result<String> {
        let replicas = self.to_spec.replicas;
        let mut parts = Vec::new();
        for service in &self.services {
            let standby = self.to.observe(service).await?;
            let Some(current) = standby.revisions.last() else {
                return Err(Error::invalid(
                    format!("environments.{}", self.to_env),
                    format!("runs no revision of {service}: there is nothing to scale"),
                ));
            };
            self.to
                .apply(service, &desired(current.revision.clone(), replicas))
                .await?;
            let settled = self
                .to
                .wait_settled(service, Duration::from_millis(100), timeout)
                .await
                .map_err(|e| Error::transient(format!("scale {service}"), e.chain()))?;
            parts.push(format!(
                "{service} {} at {} ready",
                current.revision.label,
                settled.revisions.iter().map(|r| r.ready()).sum::<u32>()
            ));
        }
        Ok(format!("{} scaled: {}", self.to_env, parts.join(", ")))
    }

    /// The standby's proxy serves its own instances; the primary's forwards every request to
    /// it (said plainly when the primary's daemon is gone: then only the hook can move
    /// clients).
    pub(crate) async fn switch(&self) -> Result<(String, SocketAddr)> {
        self.to.forward(None).await?;
        let to = self.to.info().await?.proxy;
        let detail = match self.from.forward(Some(to)).await {
            Ok(()) => format!("{}'s proxy forwards every request to {to}", self.from_env),
            Err(e) if e.is_retryable() => format!(
                "{}'s daemon is gone ({}); clients must reach {} at {to}",
                self.from_env,
                e.chain(),
                self.to_env
            ),
            Err(e) => return Err(e),
        };
        Ok((detail, to))
    }

    /// Requests through the standby's proxy, and through the primary's when its daemon
    /// answers, reach a ready instance of every service (its readiness path, else `/`).
    pub(crate) async fn verify(&self) -> Result<String> {
        let to = self.to.info().await?.proxy;
        let from = self.from.info().await.ok().map(|i| i.proxy);
        let mut checked = Vec::new();
        for service in &self.services {
            let standby = self.to.observe(service).await?;
            let path = standby
                .revisions
                .last()
                .and_then(|r| r.revision.config.health.readiness.as_ref())
                .and_then(|p| match &p.action {
                    ProbeAction::Http { path, .. } => Some(path.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| "/".to_string());
            let host = format!("{service}.localhost");
            for proxy in std::iter::once(to).chain(from) {
                crate::http_get::get_at(proxy, &host, &path)
                    .await
                    .map_err(|why| Error::transient(format!("verify {service}"), why))?;
                checked.push(format!("http://{proxy}{path} ({host})"));
            }
        }
        Ok(format!("answered 2xx: {}", checked.join(", ")))
    }
}

/// How long an assessment waits for a warm instance that is still starting.
const STARTING_GRACE: Duration = Duration::from_secs(10);

/// The revision `observed` serves: the one with the largest share of traffic, else the newest
/// with instances wanted.
pub(crate) fn served(observed: &Observed) -> Option<Arc<Revision>> {
    if let Some((id, _)) = observed.traffic.iter().max_by_key(|(_, w)| w.percent()) {
        return observed
            .revisions
            .iter()
            .find(|r| &r.revision.id == id)
            .map(|r| r.revision.clone());
    }
    observed
        .revisions
        .iter()
        .rev()
        .find(|r| r.desired > 0)
        .map(|r| r.revision.clone())
}

/// `replicas` instances of `revision` alone, serving all traffic.
fn desired(revision: Arc<Revision>, replicas: u32) -> DesiredState {
    let routes = Routes::all_to(&revision.id);
    DesiredState::new(
        vec![RevisionTarget::new(revision, replicas)],
        Traffic::routed(routes),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use deploykit_core::{
        Digest, EnvironmentKind, Observed, RevisionObservation, ServiceSpec, Traffic, Weight,
    };

    use super::*;

    fn revision(label: &str) -> Arc<Revision> {
        let web = ServiceSpec::builder().name("web").build().unwrap();
        let env = EnvironmentSpec::builder()
            .name("production")
            .kind(EnvironmentKind::Production)
            .build()
            .unwrap();
        Arc::new(Revision::new(&web, &env, Digest::of_bytes(label.as_bytes()), label).unwrap())
    }

    #[test]
    fn the_served_revision_is_the_one_with_most_traffic_else_the_newest_wanted() {
        let (v1, v2, v3) = (revision("v1"), revision("v2"), revision("v3"));
        let revisions = vec![
            RevisionObservation::new(v1.clone(), 2, vec![]),
            RevisionObservation::new(v2.clone(), 1, vec![]),
            RevisionObservation::new(v3.clone(), 0, vec![]),
        ];
        // v1 is older and has more instances, but v2 takes most of the traffic.
        let traffic = BTreeMap::from([
            (v1.id.clone(), Weight::new(30).unwrap()),
            (v2.id.clone(), Weight::new(70).unwrap()),
        ]);
        let observed = Observed::new(revisions.clone(), traffic, Traffic::ByReadyInstances);
        assert_eq!(served(&observed).unwrap().label, "v2");
        // Nothing ready to serve: the newest with instances wanted, never one scaled to 0.
        let idle = Observed::new(revisions, BTreeMap::new(), Traffic::ByReadyInstances);
        assert_eq!(served(&idle).unwrap().label, "v2");
        let empty = Observed::new(vec![], BTreeMap::new(), Traffic::ByReadyInstances);
        assert!(served(&empty).is_none());
        // The standby's copy: same build and label, the standby's settings, a new id.
        let dr = EnvironmentSpec::builder()
            .name("production-dr")
            .kind(EnvironmentKind::Production)
            .replicas(3)
            .variables(BTreeMap::from([("SITE".into(), "dr".into())]))
            .build()
            .unwrap();
        let copy = desired(Arc::new(v2.in_environment(&dr).unwrap()), 1);
        assert_eq!(copy.revisions.len(), 1);
        assert_eq!(copy.revisions[0].revision.label, "v2");
        assert_eq!(copy.revisions[0].replicas, 1);
        assert_ne!(copy.revisions[0].revision.id, v2.id);
        assert_eq!(copy.revisions[0].revision.config.variables["SITE"], "dr");
    }
}
