//! Multi-service releases: several services rolled forward together and promoted all or
//! nothing.

use std::collections::BTreeSet;

use typed_builder::TypedBuilder;

use super::{Orchestrator, Plan};
use crate::access::AccessAction;
use crate::error::{Error, Result};
use crate::journal::{Actor, DeploymentKind, DeploymentStatus, ReleaseMembership};
use crate::model::{DeploymentId, Digest, EnvironmentName, ServiceSpec};
use crate::store::AuditAction;

/// One service of a release and the artifact it moves to.
#[derive(Clone, Debug, TypedBuilder)]
#[non_exhaustive]
pub struct ReleaseService {
    /// The service.
    pub service: ServiceSpec,
    /// The artifact's digest.
    pub artifact: Digest,
    /// A label for humans.
    #[builder(setter(into))]
    pub label: String,
}

/// A request to release several services of one environment together.
#[derive(Clone, Debug, TypedBuilder)]
#[non_exhaustive]
pub struct ReleaseRequest {
    /// The environment (its strategy must promote: blue-green or canary).
    #[builder(setter(into))]
    pub environment: String,
    /// The services, each once.
    pub services: Vec<ReleaseService>,
    /// Who asks.
    pub requested_by: Actor,
}

/// A release in flight: one deployment per service.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Release {
    /// The release's id.
    pub id: String,
    /// Its deployments, in the order the services were given.
    pub deployments: Vec<DeploymentId>,
}

impl Orchestrator {
    /// Roll several services forward together. Each runs its environment's blue-green or canary
    /// rollout, but none switches traffic until every one is ready to; if any fails (analysis,
    /// health, deadline, abort), all of them roll back. Argo Rollouts and Flagger promote one
    /// workload at a time (argo-rollouts#2088, #4565).
    pub async fn release(&self, request: ReleaseRequest) -> Result<Release> {
        let environment = EnvironmentName::new(request.environment.as_str())?;
        let target = self.shared.target(&environment)?;
        let strategy = target.spec.strategy.clone();
        if !strategy.promotes() {
            return Err(Error::invalid(
                "strategy",
                format!(
                    "a multi-service release promotes all services at once, which needs a \
                     blue-green or canary strategy; environment {environment} uses {}",
                    strategy.name()
                ),
            ));
        }
        target.check_strategy(&strategy)?;
        if request.services.is_empty() {
            return Err(Error::invalid(
                "release.services",
                "a release needs at least one service",
            ));
        }
        let mut seen = BTreeSet::new();
        let mut revisions = Vec::new();
        for s in request.services {
            self.shared
                .authorize(
                    &request.requested_by,
                    AccessAction::Deploy,
                    &environment,
                    &s.service.name,
                    None,
                )
                .await?;
            if !seen.insert(s.service.name.clone()) {
                return Err(Error::invalid(
                    "release.services",
                    format!("service {} appears twice", s.service.name),
                ));
            }
            revisions.push(
                self.shared
                    .revision(&s.service, &target.spec, s.artifact, s.label)
                    .await?,
            );
        }
        let ids: Vec<DeploymentId> = revisions
            .iter()
            .map(|r| self.shared.new_deployment_id(r, &environment))
            .collect();
        let mut h = blake3::Hasher::new();
        for id in &ids {
            h.update(id.as_str().as_bytes());
        }
        let release_id = format!("rel-{}", &h.finalize().to_hex()[..12]);
        let membership = ReleaseMembership {
            id: release_id.clone(),
            deployments: ids.clone(),
        };
        for (revision, id) in revisions.into_iter().zip(&ids) {
            let plan = Plan {
                kind: DeploymentKind::Deploy,
                strategy: strategy.clone(),
                failure_policy: target.spec.failure_policy,
                release: Some((id.clone(), membership.clone())),
            };
            self.shared
                .create(
                    &environment,
                    revision,
                    plan,
                    request.requested_by.clone(),
                    AuditAction::Deploy,
                )
                .await?;
        }
        Ok(Release {
            id: release_id,
            deployments: ids,
        })
    }

    /// Wait until every deployment of `release` ends; their final statuses, in order.
    pub async fn wait_release(&self, release: &Release) -> Result<Vec<DeploymentStatus>> {
        let mut out = Vec::new();
        for id in &release.deployments {
            out.push(self.wait(id).await?);
        }
        Ok(out)
    }
}
