//! A warm standby: deploykit keeps the standby environment running what the primary serves
//! (the same builds, re-made with the standby's settings, at `warm` instances each); a
//! failover scales them to the standby's `replicas`, hands the primary's clients over to the
//! standby and checks that requests reach a ready instance.
//!
//! The services are driven through the [`Environment`] trait, so this is the same on every
//! backend; how clients move from one environment to the other is the backend's part, a
//! [`Handover`]: the local backend's primary proxy forwarding to the standby's proxy, a
//! Kubernetes route pointing at the standby namespace's Services (`deploykit-k8s`).
//!
//! ```
//! # use std::sync::Arc;
//! # use deploykit_core::*;
//! # use deploykit_core::failover::{Handover, WarmStandby};
//! # fn wire(primary: Arc<dyn Environment>, standby: Arc<dyn Environment>,
//! #         handover: Arc<dyn Handover>, dr: EnvironmentSpec) -> Result<()> {
//! let warm = WarmStandby::builder()
//!     .from_env(EnvironmentName::new("production")?)
//!     .to_env(EnvironmentName::new("production-dr")?)
//!     .from(primary)
//!     .to(standby)
//!     .to_spec(dr)
//!     .warm(1)
//!     .services(vec![ServiceId::new("web")?])
//!     .handover(handover)
//!     .build();
//! // warm.sync().await? every few seconds while the primary is healthy; a failover site
//! // calls readiness, scale, switch and verify.
//! # let _ = warm; Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use typed_builder::TypedBuilder;

use crate::environment::{
    DesiredState, Environment, EnvironmentExt, Observed, RevisionTarget, Routes, Traffic,
};
use crate::error::{Error, Result};
use crate::model::{EnvironmentName, EnvironmentSpec, ProbeAction, Revision, ServiceId};

/// How the primary's clients reach a standby: the backend's part of a [`WarmStandby`].
/// Every method may be called again after a crash (a resumed failover), so each must be
/// idempotent.
#[async_trait]
pub trait Handover: Send + Sync + fmt::Debug {
    /// Where the primary's clients of `service` are sent instead of the primary, in words, if
    /// they are (a failover handed them over): then a sync leaves the standby alone.
    async fn redirected(&self, service: &ServiceId) -> Result<Option<String>>;

    /// Whether the standby's platform answers (its daemon, its cluster): where it serves, in
    /// words, or why it cannot take over.
    async fn standby_reachable(&self) -> std::result::Result<String, String>;

    /// Send the primary's clients of `services` to the standby, which serves its own
    /// instances: what was done. When the primary's side is gone (its daemon, its cluster),
    /// say so in the detail and where clients must go; fail only when the standby cannot be
    /// reached.
    async fn hand_over(&self, services: &[ServiceId]) -> Result<String>;

    /// Check that requests for `service` reach a ready instance on the standby, every way in
    /// the backend knows (`path`: the service's readiness path): what was checked. A transient
    /// error while they do not.
    async fn check(&self, service: &ServiceId, path: &str) -> Result<String>;
}

/// What one sync did for one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Synced {
    /// The standby already runs the primary's revision (described).
    InStep(String),
    /// The standby was given the primary's revision (described).
    Applied(String),
    /// Nothing to do, and why (the primary serves nothing, or the standby has taken over).
    Skipped(String),
}

/// The two environments of a warm standby and what the standby runs (see the module docs).
#[derive(Debug, TypedBuilder)]
#[non_exhaustive]
pub struct WarmStandby {
    /// The primary environment.
    pub from_env: EnvironmentName,
    /// The standby environment.
    pub to_env: EnvironmentName,
    /// The primary's services.
    from: Arc<dyn Environment>,
    /// The standby's services.
    to: Arc<dyn Environment>,
    /// The standby environment's settings (its variables, replicas).
    to_spec: EnvironmentSpec,
    /// Instances per service while the standby waits (0: cold, none running).
    warm: u32,
    /// The services kept in step.
    services: Vec<ServiceId>,
    /// How clients move to the standby.
    handover: Arc<dyn Handover>,
    /// How long a readiness check waits for warm instances still starting (default 10 s).
    #[builder(default = Duration::from_secs(10))]
    starting_grace: Duration,
}

impl WarmStandby {
    /// The services kept in step.
    pub fn services(&self) -> &[ServiceId] {
        &self.services
    }

    /// Bring the standby in step with the primary: for each service the primary serves, the
    /// standby runs the same build with its own settings at `warm` instances. A service is
    /// skipped while its clients are handed over to another environment (a failover happened:
    /// the standby is the one serving) or while the standby runs more than `warm` instances.
    pub async fn sync(&self) -> Result<Vec<(ServiceId, Synced)>> {
        let mut out = Vec::new();
        for service in &self.services {
            if let Some(to) = self.handover.redirected(service).await? {
                out.push((
                    service.clone(),
                    Synced::Skipped(format!(
                        "{}'s clients go to {to}: it has been failed over",
                        self.from_env
                    )),
                ));
                continue;
            }
            let primary = self.from.observe(service).await?;
            let Some(serving) = primary.served_revision() else {
                out.push((
                    service.clone(),
                    Synced::Skipped(format!("{} serves no revision of it", self.from_env)),
                ));
                continue;
            };
            let wanted = serving.in_environment(&self.to_spec)?;
            let standby = self.to.observe(service).await?;
            let running = standby.revisions.iter().map(|r| r.desired).max();
            if let Some(n) = running.filter(|n| *n > self.warm) {
                out.push((
                    service.clone(),
                    Synced::Skipped(format!(
                        "{} runs {n} instance(s), more than warm ({}): it serves",
                        self.to_env, self.warm
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
                .apply(service, &alone(Arc::new(wanted), self.warm))
                .await?;
            tracing::info!(%service, revision = %what, standby = %self.to_env, warm = self.warm, "standby brought in step");
            out.push((service.clone(), Synced::Applied(what)));
        }
        Ok(out)
    }

    /// Whether the standby can take over: its platform answers and it runs every service
    /// (with a ready instance when warm); the detail names revisions that differ from the
    /// primary's (not refused: the primary may be gone).
    pub async fn readiness(&self) -> std::result::Result<String, String> {
        let reachable = self.handover.standby_reachable().await?;
        let mut parts = Vec::new();
        for service in &self.services {
            // Warm instances still starting (a sync just gave them a new build), none ready and
            // none failed, are waited for a moment; ones that do not become ready make the
            // standby unhealthy.
            let deadline = tokio::time::Instant::now() + self.starting_grace;
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
                    "{} runs no revision of {service}: sync it first",
                    self.to_env
                ));
            };
            if self.warm > 0 && current.ready() == 0 {
                return Err(format!(
                    "{service} on {} has no ready instance after {:?} ({})",
                    self.to_env,
                    self.starting_grace,
                    standby.summary()
                ));
            }
            let mut part = format!(
                "{service} {} ({} ready)",
                current.revision.label,
                current.ready()
            );
            if let Ok(primary) = self.from.observe(service).await
                && let Some(serving) = primary.served_revision()
                && serving.label != current.revision.label
            {
                part.push_str(&format!(", but {} serves {}", self.from_env, serving.label));
            }
            parts.push(part);
        }
        Ok(format!("{reachable}: {}", parts.join(", ")))
    }

    /// Scale each service on the standby to its `replicas`, serving all its traffic, and wait
    /// until every instance is ready (within `timeout`).
    pub async fn scale(&self, timeout: Duration) -> Result<String> {
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
                .apply(service, &alone(current.revision.clone(), replicas))
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

    /// Hand the primary's clients over to the standby (see [`Handover::hand_over`]).
    pub async fn switch(&self) -> Result<String> {
        self.handover.hand_over(&self.services).await
    }

    /// Requests reach a ready instance of every service on the standby (its readiness path,
    /// else `/`), checked by the [`Handover`].
    pub async fn verify(&self) -> Result<String> {
        let mut checked = Vec::new();
        for service in &self.services {
            let standby = self.to.observe(service).await?;
            let current = standby.revisions.last().ok_or_else(|| {
                Error::transient(
                    format!("verify {service}"),
                    format!("{} runs no revision of it", self.to_env),
                )
            })?;
            if current.ready() == 0 {
                return Err(Error::transient(
                    format!("verify {service}"),
                    format!(
                        "{} has no ready instance ({})",
                        self.to_env,
                        standby.summary()
                    ),
                ));
            }
            let path = current
                .revision
                .config
                .health
                .readiness
                .as_ref()
                .and_then(|p| match &p.action {
                    ProbeAction::Http { path, .. } => Some(path.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| "/".to_string());
            checked.push(self.handover.check(service, &path).await?);
        }
        Ok(checked.join("; "))
    }
}

impl Observed {
    /// The revision this service serves: the one with the largest share of traffic, else the
    /// newest with instances wanted.
    pub fn served_revision(&self) -> Option<Arc<Revision>> {
        if let Some((id, _)) = self.traffic.iter().max_by_key(|(_, w)| w.percent()) {
            return self
                .revisions
                .iter()
                .find(|r| &r.revision.id == id)
                .map(|r| r.revision.clone());
        }
        self.revisions
            .iter()
            .rev()
            .find(|r| r.desired > 0)
            .map(|r| r.revision.clone())
    }
}

/// `replicas` instances of `revision` alone, serving all traffic.
fn alone(revision: Arc<Revision>, replicas: u32) -> DesiredState {
    let routes = Routes::all_to(&revision.id);
    DesiredState::new(
        vec![RevisionTarget::new(revision, replicas)],
        Traffic::routed(routes),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::environment::RevisionObservation;
    use crate::model::{Digest, EnvironmentKind, ServiceSpec, Weight};

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
        assert_eq!(observed.served_revision().unwrap().label, "v2");
        // Nothing ready to serve: the newest with instances wanted, never one scaled to 0.
        let idle = Observed::new(revisions, BTreeMap::new(), Traffic::ByReadyInstances);
        assert_eq!(idle.served_revision().unwrap().label, "v2");
        let empty = Observed::new(vec![], BTreeMap::new(), Traffic::ByReadyInstances);
        assert!(empty.served_revision().is_none());
        // The standby's copy: same build and label, the standby's settings, a new id.
        let dr = EnvironmentSpec::builder()
            .name("production-dr")
            .kind(EnvironmentKind::Production)
            .replicas(3)
            .variables(BTreeMap::from([("SITE".into(), "dr".into())]))
            .build()
            .unwrap();
        let copy = alone(Arc::new(v2.in_environment(&dr).unwrap()), 1);
        assert_eq!(copy.revisions.len(), 1);
        assert_eq!(copy.revisions[0].revision.label, "v2");
        assert_eq!(copy.revisions[0].replicas, 1);
        assert_ne!(copy.revisions[0].revision.id, v2.id);
        assert_eq!(copy.revisions[0].revision.config.variables["SITE"], "dr");
    }
}
