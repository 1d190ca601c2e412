//! Opening the configuration, the journal and the orchestrator that every command works on.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use deploykit_config::Config;
use deploykit_core::secrets::SecretProvider;
use deploykit_core::{
    Actor, DeploymentStatus, Digest, EnvironmentKind, EnvironmentName, Error, Orchestrator,
    OrchestratorConfig, Phase, Result, ServiceSpec,
};
use deploykit_local::LocalClient;
use deploykit_secrets::{FileSecretProvider, Identity};
use deploykit_sqlite::SqliteStore;
use serde_json::json;

use crate::{Cli, EXIT_ROLLED_BACK, Output};

/// Everything a command needs: the configuration, where state lives, who acts.
pub(crate) struct Context {
    pub(crate) config: Config,
    pub(crate) config_path: PathBuf,
    pub(crate) config_dir: PathBuf,
    pub(crate) state: PathBuf,
    pub(crate) output: Output,
    pub(crate) actor: Actor,
}

impl Context {
    pub(crate) fn load(cli: &Cli) -> Result<Context> {
        let config = Config::load(&cli.config)?;
        let config_dir = cli
            .config
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let state = cli
            .state
            .clone()
            .unwrap_or_else(|| config_dir.join(".deploykit"));
        std::fs::create_dir_all(&state)
            .map_err(|e| Error::backend(format!("create {}", state.display()), e.to_string()))?;
        let actor = cli
            .actor
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "deploykit".into());
        Ok(Context {
            config,
            config_path: cli.config.clone(),
            config_dir,
            state,
            output: cli.output,
            actor: Actor::new(actor),
        })
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.state.join("daemon.sock")
    }

    pub(crate) fn client(&self) -> LocalClient {
        LocalClient::new(self.socket())
    }

    pub(crate) async fn store(&self) -> Result<Arc<SqliteStore>> {
        Ok(Arc::new(
            SqliteStore::open(self.state.join("deploykit.db")).await?,
        ))
    }

    /// The environment named on the command line, or the only one, or `production`.
    pub(crate) fn environment(&self, name: Option<&str>) -> Result<EnvironmentName> {
        if let Some(name) = name {
            self.config.environment(name)?;
            return EnvironmentName::new(name);
        }
        let all: Vec<_> = self
            .config
            .environments()
            .filter(|e| e.kind != EnvironmentKind::Preview)
            .collect();
        match all.as_slice() {
            [only] => Ok(only.name.clone()),
            _ if all.iter().any(|e| e.name.as_str() == "production") => {
                EnvironmentName::new("production")
            }
            _ => Err(Error::invalid(
                "--env",
                format!(
                    "{} has several environments; name one with --env",
                    self.config_dir.join("deploykit.toml").display()
                ),
            )),
        }
    }

    /// The secrets file's provider, when the configuration names one and
    /// `DEPLOYKIT_AGE_KEY_FILE` says where the identity is.
    pub(crate) fn secrets(&self) -> Result<Option<Arc<dyn SecretProvider>>> {
        let Some(file) = self.config.secrets_file() else {
            return Ok(None);
        };
        let Ok(key) = std::env::var("DEPLOYKIT_AGE_KEY_FILE") else {
            return Ok(None);
        };
        let identity = Identity::from_key_file(Path::new(&key))?;
        Ok(Some(Arc::new(FileSecretProvider::open(file, &identity)?)))
    }

    /// An orchestrator over the daemon, for every environment in the configuration. It
    /// resumes in-flight deployments as soon as their leases allow.
    pub(crate) async fn orchestrator(&self) -> Result<Orchestrator> {
        let client = Arc::new(self.client());
        client.info().await?;
        let mut builder = Orchestrator::builder_shared(self.store().await?).config(
            OrchestratorConfig::builder()
                .poll_interval(Duration::from_millis(250))
                .lease_ttl(Duration::from_secs(10))
                .build(),
        );
        for spec in self.config.environments() {
            if spec.kind == EnvironmentKind::Preview {
                builder = builder.previews(spec.clone(), client.clone());
            } else {
                builder =
                    builder.environment_with_monitor(spec.clone(), client.clone(), client.clone());
            }
        }
        if let Some(secrets) = self.secrets()? {
            builder = builder.secrets(secrets);
        }
        builder.open().await
    }

    /// The service's spec with `--set` overrides, and its artifact digest: the build
    /// pipeline's output if it has stages, else the content of the program it runs.
    pub(crate) async fn service_and_artifact(
        &self,
        name: &str,
        set: &[String],
    ) -> Result<(ServiceSpec, Digest)> {
        let mut spec = self.config.service(name)?.clone();
        for kv in set {
            let Some((k, v)) = kv.split_once('=') else {
                return Err(Error::invalid("--set", format!("{kv:?} is not KEY=VALUE")));
            };
            spec.variables.insert(k.to_string(), v.to_string());
        }
        let pipeline = self.config.pipeline(name)?;
        let artifacts = pipeline
            .run(&deploykit_core::BuildContext::new(&self.config_dir))
            .await?;
        if let Some(a) = artifacts.first() {
            return Ok((spec, a.digest.clone()));
        }
        let program = spec.command.first().ok_or_else(|| {
            Error::invalid(
                format!("services.{name}.command"),
                "the local environment needs a command to run",
            )
        })?;
        let path = if program.contains('/') {
            self.config_dir.join(program)
        } else {
            PathBuf::from(program)
        };
        let digest = match std::fs::read(&path) {
            Ok(bytes) => Digest::of_bytes(&bytes),
            Err(_) => Digest::of_bytes(program.as_bytes()),
        };
        Ok((spec, digest))
    }

    /// Start `deploykit resume` detached from this terminal, logging to `<state>/resume.log`.
    pub(crate) fn resume_in_background(&self) -> Result<()> {
        let fail = |e: std::io::Error| {
            Error::backend("start `deploykit resume` in the background", e.to_string())
        };
        let exe = std::env::current_exe().map_err(fail)?;
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.state.join("resume.log"))
            .map_err(fail)?;
        std::process::Command::new(exe)
            .arg("--config")
            .arg(&self.config_path)
            .arg("--state")
            .arg(&self.state)
            .arg("--actor")
            .arg(self.actor.to_string())
            .arg("resume")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(fail)?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(fail)?;
        Ok(())
    }

    pub(crate) fn print(&self, text: impl std::fmt::Display, value: serde_json::Value) {
        match self.output {
            Output::Text => println!("{text}"),
            Output::Json => println!("{value}"),
        }
    }
}

/// The JSON summary of a deployment.
pub(crate) fn status_json(s: &DeploymentStatus) -> serde_json::Value {
    json!({
        "id": s.spec.id.to_string(),
        "service": s.spec.service.to_string(),
        "environment": s.spec.environment.to_string(),
        "revision": s.spec.target.id.to_string(),
        "label": s.spec.target.label,
        "phase": s.phase.to_string(),
        "previous": s.previous.as_ref().map(|r| r.label.clone()),
        "rollback_reason": s.rollback.as_ref().map(|(_, r)| r.clone()),
        "awaiting": s.awaiting.as_ref().map(|(gate, what)| json!({"gate": gate, "asks": what})),
        "waits_until": s.waits_until().map(|t| t.to_string()),
    })
}

/// 0 for success, 3 for rolled back, aborted or failed.
pub(crate) fn exit_for(phase: Phase) -> ExitCode {
    match phase {
        Phase::Succeeded => ExitCode::SUCCESS,
        _ => ExitCode::from(EXIT_ROLLED_BACK),
    }
}
