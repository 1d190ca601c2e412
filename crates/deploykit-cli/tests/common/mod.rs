//! Shared by the integration tests: the sample app, a local environment and an orchestrator
//! over it, built from a `deploykit.toml` text.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use deploykit_core::config::Config;
use deploykit_core::{
    Actor, DeployRequest, Digest, Orchestrator, OrchestratorConfig, ServiceSpec, SqliteStore,
};
use deploykit_local::{LocalEnvironment, LocalOptions};

/// The sample app binary cargo built for these tests.
pub const APP: &str = env!("CARGO_BIN_EXE_deploykit-sample-app");
/// The deploykit binary.
pub const CLI: &str = env!("CARGO_BIN_EXE_deploykit");

/// A local environment with an orchestrator, in a temporary directory.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub local: LocalEnvironment,
    pub orchestrator: Orchestrator,
}

impl Rig {
    /// `toml` may say `{APP}` for the sample app's path.
    pub async fn new(toml: &str) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config::from_toml_str("deploykit.toml", &toml.replace("{APP}", APP))
            .expect("test configuration");
        let local = LocalEnvironment::open(
            LocalOptions::new(dir.path().join("local"))
                .listen("127.0.0.1:0".parse().expect("addr"))
                .workdir(dir.path())
                .grace(Duration::from_secs(3))
                .drain_timeout(Duration::from_secs(10)),
        )
        .await
        .expect("open the local environment");
        let mut builder = Orchestrator::builder(
            SqliteStore::open(dir.path().join("deploykit.db"))
                .await
                .expect("journal"),
        )
        .config(
            OrchestratorConfig::builder()
                .poll_interval(Duration::from_millis(100))
                .build(),
        );
        for env in config.environments() {
            builder = builder.environment_with_monitor(
                env.clone(),
                Arc::new(local.clone()),
                Arc::new(local.clone()),
            );
        }
        let orchestrator = builder.open().await.expect("orchestrator");
        Rig {
            dir,
            config,
            local,
            orchestrator,
        }
    }

    /// The service `name` with extra variables.
    pub fn service(&self, name: &str, vars: &[(&str, &str)]) -> ServiceSpec {
        let mut spec = self.config.service(name).expect("service").clone();
        for (k, v) in vars {
            spec.variables.insert((*k).into(), (*v).into());
        }
        spec
    }

    /// A deploy request of `service` in `env` labelled `label` (also its VERSION).
    pub fn request(
        &self,
        service: &str,
        env: &str,
        label: &str,
        vars: &[(&str, &str)],
    ) -> DeployRequest {
        let mut all = vec![("VERSION", label)];
        all.extend_from_slice(vars);
        DeployRequest::builder()
            .service(self.service(service, &all))
            .environment(env)
            .artifact(Digest::of_bytes(APP.as_bytes()))
            .label(label)
            .requested_by(Actor::new("test"))
            .build()
    }

    /// Stop everything.
    pub async fn close(self) {
        self.orchestrator.shutdown().await.expect("shutdown");
        self.local.shutdown(true).await;
    }
}
