//! Preview environments: an ephemeral environment per branch or pull request, with its own
//! route and a time-to-live.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use typed_builder::TypedBuilder;

use super::{Orchestrator, Plan, Shared, Target};
use crate::access::AccessAction;
use crate::audit::AuditAction;
use crate::environment::{DesiredState, Environment, Observed, TrafficSplit};
use crate::error::{Error, Result};
use crate::journal::{Actor, DeploymentKind};
use crate::model::{
    DeploymentId, Digest, EnvironmentKind, EnvironmentName, EnvironmentSpec, FailurePolicy,
    ServiceId, ServiceSpec,
};
use crate::strategy::StrategySpec;
use crate::time::Timestamp;

const PREFIX: &str = "preview-";

/// The environment name for `branch`: `preview-` and the branch in lowercase with every run of
/// other characters turned into one `-` (`feature/Login_42` → `preview-feature-login-42`).
/// Names that would pass 63 characters are cut and end in a hash of the whole branch, so two
/// long branches never share a preview.
///
/// ```
/// use deploykit_core::preview_name;
/// assert_eq!(preview_name("feature/Login_42")?.as_str(), "preview-feature-login-42");
/// assert_eq!(preview_name("PR #7")?.as_str(), "preview-pr-7");
/// # Ok::<(), deploykit_core::Error>(())
/// ```
pub fn preview_name(branch: &str) -> Result<EnvironmentName> {
    let mut slug = String::new();
    for c in branch.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() {
        return Err(Error::invalid(
            "preview.branch",
            format!("{branch:?} has no letters or digits to name a preview after"),
        ));
    }
    let mut name = format!("{PREFIX}{slug}");
    if name.len() > 63 {
        let hash = blake3::hash(branch.as_bytes()).to_hex();
        name.truncate(54);
        let cut = name.trim_end_matches('-').len();
        name.truncate(cut);
        name.push('-');
        name.push_str(&hash[..8]);
    }
    EnvironmentName::new(name)
}

/// An [`Environment`] adapter that keeps one preview's services apart from everything else on a
/// shared backend: service `web` of `preview-pr-7` is `web-preview-pr-7` there (shortened with a
/// hash past 63 characters).
#[derive(Debug)]
pub struct ScopedEnvironment {
    inner: Arc<dyn Environment>,
    scope: String,
}

impl ScopedEnvironment {
    /// Scope `inner` to `scope`.
    pub fn new(inner: Arc<dyn Environment>, scope: impl Into<String>) -> Self {
        ScopedEnvironment {
            inner,
            scope: scope.into(),
        }
    }

    /// The name `service` has on the backend.
    pub fn scoped(&self, service: &ServiceId) -> Result<ServiceId> {
        let mut name = format!("{service}-{}", self.scope);
        if name.len() > 63 {
            let hash = blake3::hash(name.as_bytes()).to_hex();
            name.truncate(54);
            let cut = name.trim_end_matches('-').len();
            name.truncate(cut);
            name.push('-');
            name.push_str(&hash[..8]);
        }
        ServiceId::new(name)
    }
}

#[async_trait]
impl Environment for ScopedEnvironment {
    async fn apply(&self, service: &ServiceId, desired: &DesiredState) -> Result<()> {
        self.inner.apply(&self.scoped(service)?, desired).await
    }

    async fn observe(&self, service: &ServiceId) -> Result<Observed> {
        self.inner.observe(&self.scoped(service)?).await
    }

    async fn teardown(&self, service: &ServiceId) -> Result<()> {
        self.inner.teardown(&self.scoped(service)?).await
    }

    fn traffic_split(&self) -> TrafficSplit {
        self.inner.traffic_split()
    }
}

/// How previews are made: an environment spec to copy and the backend to run them on.
#[derive(Debug)]
pub(crate) struct PreviewTemplate {
    spec: EnvironmentSpec,
    env: Arc<dyn Environment>,
}

impl PreviewTemplate {
    pub(crate) fn new(spec: EnvironmentSpec, env: Arc<dyn Environment>) -> Self {
        PreviewTemplate { spec, env }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        self.spec.validate()
    }

    /// The target of preview environment `name`, if it is one.
    pub(crate) fn target(&self, name: &EnvironmentName) -> Option<Arc<Target>> {
        if !name.as_str().starts_with(PREFIX) {
            return None;
        }
        let mut spec = self.spec.clone();
        spec.name = name.clone();
        spec.kind = EnvironmentKind::Preview;
        Some(Arc::new(Target {
            spec,
            env: Arc::new(ScopedEnvironment::new(self.env.clone(), name.as_str())),
            monitor: None,
        }))
    }
}

/// A request for a preview of one service on one branch.
#[derive(Clone, Debug, TypedBuilder)]
#[non_exhaustive]
pub struct PreviewRequest {
    /// The service.
    pub service: ServiceSpec,
    /// The branch or pull request (`feature/login`, `pr-42`).
    #[builder(setter(into))]
    pub branch: String,
    /// The artifact's digest.
    pub artifact: Digest,
    /// A label for humans.
    #[builder(setter(into))]
    pub label: String,
    /// How long the preview lives after this deployment (default 24 h).
    #[builder(default = Duration::from_secs(24 * 3600))]
    pub ttl: Duration,
    /// Who asks.
    pub requested_by: Actor,
}

/// A preview environment, as created or updated.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Preview {
    /// Its environment (`preview-<branch>`).
    pub environment: EnvironmentName,
    /// The deployment that creates or updates it.
    pub deployment: DeploymentId,
    /// Its route: `<environment>.localhost` (backends map it to their own hosts).
    pub route: String,
    /// When it will be torn down unless updated again.
    pub expires_at: Timestamp,
}

impl Orchestrator {
    /// Create the preview of `request.branch`, or update it if it exists (a new deployment of
    /// the preview environment, which also extends its time-to-live).
    pub async fn preview(&self, request: PreviewRequest) -> Result<Preview> {
        let environment = preview_name(&request.branch)?;
        self.shared
            .authorize(
                &request.requested_by,
                AccessAction::Deploy,
                &environment,
                &request.service.name,
                None,
            )
            .await?;
        let target = self.shared.target(&environment).map_err(|_| {
            Error::invalid(
                "previews",
                "preview environments are not enabled: call `OrchestratorBuilder::previews`",
            )
        })?;
        if request.ttl.is_zero() {
            return Err(Error::invalid("preview.ttl", "must be more than 0"));
        }
        let revision = self
            .shared
            .revision(
                &request.requested_by,
                &request.service,
                &target.spec,
                request.artifact,
                request.label,
            )
            .await?;
        let expires_at = self.shared.clock.now().plus(request.ttl);
        let plan = Plan {
            kind: DeploymentKind::Preview {
                branch: request.branch,
                expires_at,
            },
            strategy: StrategySpec::default(),
            failure_policy: FailurePolicy::Rollback,
            release: None,
        };
        let deployment = self
            .shared
            .create(
                &environment,
                revision,
                plan,
                request.requested_by,
                AuditAction::Deploy,
            )
            .await?;
        Ok(Preview {
            route: format!("{environment}.localhost"),
            environment,
            deployment,
            expires_at,
        })
    }

    /// Tear a preview environment down now: every service in it. Returns the teardown
    /// deployments started (none if it is torn down already).
    pub async fn teardown_preview(
        &self,
        environment: &EnvironmentName,
        by: Actor,
    ) -> Result<Vec<DeploymentId>> {
        if !environment.as_str().starts_with(PREFIX) {
            return Err(Error::invalid(
                "environment",
                format!("{environment} is not a preview environment"),
            ));
        }
        let mut started = Vec::new();
        for (service, env) in self.shared.store.list_environments().await? {
            if &env != environment {
                continue;
            }
            self.shared
                .authorize(&by, AccessAction::Teardown, &env, &service, None)
                .await?;
            if let Some(id) = self.shared.teardown(&service, &env, by.clone()).await? {
                started.push(id);
            }
        }
        Ok(started)
    }

    /// Tear down every preview whose time-to-live has passed (the orchestrator also does this
    /// by itself every `preview_reap_interval`). Returns the teardown deployments started.
    pub async fn reap_previews(&self) -> Result<Vec<DeploymentId>> {
        self.shared.reap_previews().await
    }
}

impl Shared {
    /// Start a teardown of `service` in `environment`, unless its newest deployment is one.
    pub(super) async fn teardown(
        self: &Arc<Self>,
        service: &ServiceId,
        environment: &EnvironmentName,
        by: Actor,
    ) -> Result<Option<DeploymentId>> {
        let Some(newest) = self
            .store
            .list_deployments(service, environment)
            .await?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let newest = self.status(&newest).await?;
        if newest.spec.kind == DeploymentKind::Teardown {
            return Ok(None);
        }
        let plan = Plan {
            kind: DeploymentKind::Teardown,
            strategy: StrategySpec::default(),
            failure_policy: FailurePolicy::Rollback,
            release: None,
        };
        let revision = newest.spec.target.clone();
        let id = self
            .create(environment, revision, plan, by, AuditAction::Teardown)
            .await?;
        Ok(Some(id))
    }

    async fn reap_previews(self: &Arc<Self>) -> Result<Vec<DeploymentId>> {
        let now = self.clock.now();
        let mut started = Vec::new();
        for (service, environment) in self.store.list_environments().await? {
            if !environment.as_str().starts_with(PREFIX) {
                continue;
            }
            let Some(newest) = self
                .store
                .list_deployments(&service, &environment)
                .await?
                .into_iter()
                .next()
            else {
                continue;
            };
            let newest = self.status(&newest).await?;
            let expired = matches!(
                newest.spec.kind,
                DeploymentKind::Preview { expires_at, .. } if expires_at <= now
            );
            if expired
                && newest.phase.is_terminal()
                && let Some(id) = self
                    .teardown(&service, &environment, Actor::system())
                    .await?
            {
                started.push(id);
            }
        }
        Ok(started)
    }
}

/// The reaper: tears down expired previews every `preview_reap_interval` until the
/// orchestrator is gone.
pub(super) async fn reap(shared: Weak<Shared>) {
    loop {
        let Some(interval) = shared.upgrade().map(|s| s.config.preview_reap_interval) else {
            return;
        };
        tokio::time::sleep(interval).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(e) = shared.reap_previews().await {
            tracing::warn!(error = %e.chain(), "reaping expired previews failed; will retry");
        }
    }
}
