//! Multi-service releases: several services rolled forward together and promoted all or
//! nothing. This module owns all of it: starting a release ([`Orchestrator::release`]), and the
//! coordination each member's driver consults — whether another member has failed (then this
//! one rolls back too, [`member_failed`]) and whether it may promote ([`promotion`]).

use std::collections::BTreeSet;

use typed_builder::TypedBuilder;

use super::{Orchestrator, Plan, Shared};
use crate::access::AccessAction;
use crate::audit::AuditAction;
use crate::error::{Error, Result};
use crate::journal::{Actor, DeploymentKind, DeploymentStatus, Outcome, Phase, ReleaseMembership};
use crate::model::{DeploymentId, Digest, EnvironmentName, ServiceSpec};

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
                    .revision(
                        &request.requested_by,
                        &s.service,
                        &target.spec,
                        s.artifact,
                        s.label,
                    )
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

/// What a deployment does when its planner would promote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Promotion {
    /// Say it is ready to (a release member journals `ready_to_promote` first, so the others
    /// can see it).
    Announce,
    /// Hold: another member of its release is not ready yet.
    Wait,
    /// Promote: it is in no release, or every member is ready.
    Go,
}

/// When `st`'s deployment may promote: at once outside a release; in a release, once it has
/// said it is ready and every other member is ready too (or has promoted, or succeeded).
pub(super) async fn promotion(shared: &Shared, st: &DeploymentStatus) -> Result<Promotion> {
    let Some(release) = &st.spec.release else {
        return Ok(Promotion::Go);
    };
    if st.progress.ready_to_promote_at.is_none() {
        return Ok(Promotion::Announce);
    }
    for id in others(st, release) {
        if !ready_to_promote(&shared.status(id).await?) {
            return Ok(Promotion::Wait);
        }
    }
    Ok(Promotion::Go)
}

/// Why another member of `st`'s release has failed (`release rel-…: api rolling_back: …`), if
/// one has; `None` outside a release. A release is all or nothing, so the caller rolls back.
pub(super) async fn member_failed(
    shared: &Shared,
    st: &DeploymentStatus,
) -> Result<Option<String>> {
    let Some(release) = &st.spec.release else {
        return Ok(None);
    };
    for id in others(st, release) {
        let other = shared.status(id).await?;
        if let Some(why) = failure(&other) {
            return Ok(Some(format!(
                "release {}: {} {}: {why}",
                release.id, other.spec.service, other.phase
            )));
        }
    }
    Ok(None)
}

/// The members of `release` other than `st`'s deployment.
fn others<'a>(
    st: &'a DeploymentStatus,
    release: &'a ReleaseMembership,
) -> impl Iterator<Item = &'a DeploymentId> {
    release.deployments.iter().filter(|id| **id != st.spec.id)
}

/// Why `member` failed (its rollback's reason, else its outcome's; empty if it gave none), or
/// `None` while it has not: it rolls back, rolled back, failed or froze.
fn failure(member: &DeploymentStatus) -> Option<String> {
    let failed = matches!(
        member.phase,
        Phase::RollingBack | Phase::RolledBack | Phase::Failed | Phase::Frozen
    );
    if !failed {
        return None;
    }
    let why = member
        .rollback
        .as_ref()
        .map(|(_, r)| r.clone())
        .or_else(|| match &member.outcome {
            Some(Outcome::Failed { reason } | Outcome::Frozen { reason }) => Some(reason.clone()),
            _ => None,
        })
        .unwrap_or_default();
    Some(why)
}

/// Whether `member` is ready to promote, or past that (promoted, or succeeded).
fn ready_to_promote(member: &DeploymentStatus) -> bool {
    member.progress.ready_to_promote_at.is_some()
        || member.progress.promoted_at.is_some()
        || member.phase == Phase::Succeeded
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::journal::{DeploymentSpec, JournalEntry, JournalEvent, RollbackCause};
    use crate::model::{EnvironmentKind, EnvironmentSpec, FailurePolicy, Revision};
    use crate::strategy::StrategySpec;
    use crate::time::Timestamp;

    /// A member of release `rel-1` (`api-1` and `web-1`) whose journal, after its creation,
    /// holds `events`.
    fn member(events: Vec<JournalEvent>) -> DeploymentStatus {
        let service = ServiceSpec::builder().name("api").build().unwrap();
        let environment = EnvironmentSpec::builder()
            .name("production")
            .kind(EnvironmentKind::Production)
            .replicas(1)
            .build()
            .unwrap();
        let revision =
            Revision::new(&service, &environment, Digest::of_bytes(b"api"), "v2").unwrap();
        let membership = ReleaseMembership {
            id: "rel-1".into(),
            deployments: vec![DeploymentId::new("api-1"), DeploymentId::new("web-1")],
        };
        let spec = DeploymentSpec::builder()
            .id(DeploymentId::new("api-1"))
            .service(revision.service.clone())
            .environment(environment.name.clone())
            .replicas(1)
            .strategy(StrategySpec::default())
            .failure_policy(FailurePolicy::Rollback)
            .progress_deadline(Duration::from_secs(600))
            .requested_by(Actor::new("alice"))
            .release(Some(membership))
            .target(Arc::new(revision))
            .build();
        let created = JournalEvent::Created {
            spec: Arc::new(spec),
        };
        let entries: Vec<JournalEntry> = std::iter::once(created)
            .chain(events)
            .enumerate()
            .map(|(seq, event)| {
                JournalEntry::new(
                    seq as u64,
                    Timestamp::from_millis(1_000 * seq as u64),
                    event,
                )
            })
            .collect();
        DeploymentStatus::from_journal(&entries).unwrap()
    }

    fn started() -> JournalEvent {
        JournalEvent::Started { previous: None }
    }

    fn rollback(reason: &str) -> JournalEvent {
        JournalEvent::RollbackStarted {
            cause: RollbackCause::ProgressDeadline,
            reason: reason.into(),
        }
    }

    fn finished(outcome: Outcome) -> JournalEvent {
        JournalEvent::Finished { outcome }
    }

    #[test]
    fn a_member_has_failed_once_it_rolls_back_fails_or_freezes() {
        assert_eq!(failure(&member(vec![])), None);
        assert_eq!(failure(&member(vec![started()])), None);
        let paused = JournalEvent::Paused {
            by: Actor::new("bob"),
            reason: "look".into(),
        };
        assert_eq!(failure(&member(vec![started(), paused])), None);
        assert_eq!(
            failure(&member(vec![started(), finished(Outcome::Succeeded)])),
            None
        );

        let rolling_back = member(vec![started(), rollback("analysis failed")]);
        assert_eq!(failure(&rolling_back).as_deref(), Some("analysis failed"));
        let verification = "v1 1/1 ready, 100% of traffic".to_string();
        let rolled_back = member(vec![
            started(),
            rollback("analysis failed"),
            finished(Outcome::RolledBack { verification }),
        ]);
        assert_eq!(failure(&rolled_back).as_deref(), Some("analysis failed"));
        let failed = member(vec![finished(Outcome::Failed {
            reason: "aborted before it started".into(),
        })]);
        assert_eq!(
            failure(&failed).as_deref(),
            Some("aborted before it started")
        );
        let frozen = member(vec![
            started(),
            finished(Outcome::Frozen {
                reason: "deadline".into(),
            }),
        ]);
        assert_eq!(failure(&frozen).as_deref(), Some("deadline"));
    }

    #[test]
    fn a_member_is_ready_to_promote_once_it_said_so_promoted_or_succeeded() {
        assert!(!ready_to_promote(&member(vec![started()])));
        let ready = member(vec![started(), JournalEvent::ReadyToPromote]);
        assert!(ready_to_promote(&ready));
        let promoted = member(vec![started(), JournalEvent::Promoted]);
        assert!(ready_to_promote(&promoted));
        let succeeded = member(vec![started(), finished(Outcome::Succeeded)]);
        assert!(ready_to_promote(&succeeded));
        let rolling_back = member(vec![started(), rollback("no")]);
        assert!(!ready_to_promote(&rolling_back));
    }

    #[test]
    fn the_others_are_every_member_but_itself() {
        let st = member(vec![]);
        let release = st.spec.release.clone().unwrap();
        let others: Vec<&DeploymentId> = others(&st, &release).collect();
        assert_eq!(others, [&DeploymentId::new("web-1")]);
    }
}
