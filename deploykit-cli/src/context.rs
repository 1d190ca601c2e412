//! Opening the configuration, the journal and the orchestrator that every command works on.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use deploykit_config::Config;
use deploykit_core::secrets::SecretProvider;
use deploykit_core::{
    Actor, DeploymentStatus, EnvironmentKind, EnvironmentName, Error, Orchestrator,
    OrchestratorConfig, Phase, Result, ServiceId, ServiceSpec,
};
use deploykit_local::LocalClient;
use deploykit_secrets::{FileSecretProvider, Identity};
use deploykit_sqlite::SqliteStore;
use serde_json::json;

use crate::{Cli, EXIT_ROLLED_BACK, Output};

/// Everything a command needs: the configuration, where state lives, who acts.
pub(crate) struct Context {
    /// `None` when the file could not be loaded: only commands that need it fail, with the
    /// loader's error (`backup --repo … PATH` needs no configuration).
    config: Option<Config>,
    pub(crate) config_path: PathBuf,
    pub(crate) config_dir: PathBuf,
    pub(crate) state: PathBuf,
    pub(crate) output: Output,
    /// Who acts: with `[access]`, the operating system's user running this command; else
    /// `--actor`, `$USER` or `deploykit` (a label, not an identity).
    pub(crate) actor: Actor,
    /// Why the claimed `--actor` was not accepted, if it was not.
    refused_actor: Option<String>,
    /// The name `--actor` (or `DEPLOYKIT_ACTOR`) gave, if any.
    pub(crate) claimed_actor: Option<String>,
}

impl Context {
    /// Read the configuration if it can be read; [`Context::config`] reports why not to the
    /// commands that need it.
    pub(crate) fn load(cli: &Cli) -> Context {
        let config = Config::load(&cli.config).ok();
        let config_dir = cli
            .config
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let state = cli
            .state
            .clone()
            .unwrap_or_else(|| config_dir.join(".deploykit"));
        let access_controlled = config.as_ref().is_some_and(|c| c.access_policy().is_some());
        let (actor, refused_actor) = if access_controlled {
            // Access is controlled: the actor is who runs the command, which the operating
            // system vouches for; a different name claimed is refused, never taken.
            let user = deploykit_local::daemon::current_user();
            let refused = cli
                .actor
                .as_ref()
                .filter(|claimed| **claimed != user)
                .map(|claimed| refused_claim(claimed, &user, &cli.config));
            (user, refused)
        } else {
            let claimed = cli
                .actor
                .clone()
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "deploykit".into());
            (claimed, None)
        };
        Context {
            config,
            config_path: cli.config.clone(),
            config_dir,
            state,
            output: cli.output,
            actor: Actor::new(actor),
            refused_actor,
            claimed_actor: cli.actor.clone(),
        }
    }

    /// The access policy of the configuration, if it sets one, for a command that acts as
    /// [`Context::actor`]: it fails when `--actor` (or `DEPLOYKIT_ACTOR`) names someone other
    /// than the user running the command.
    pub(crate) fn access_policy(&self) -> Result<Option<deploykit_core::access::AccessPolicy>> {
        if let Some(why) = &self.refused_actor {
            return Err(Error::invalid("--actor", why.clone()));
        }
        Ok(self.config()?.access_policy().cloned())
    }

    /// The configuration, or the error that names what is wrong with it (file:line:column).
    pub(crate) fn config(&self) -> Result<&Config> {
        match &self.config {
            Some(config) => Ok(config),
            None => Err(Config::load(&self.config_path)
                .err()
                .unwrap_or_else(|| Error::backend("read the configuration", "it changed"))),
        }
    }

    /// The state directory, created if missing.
    pub(crate) fn state_dir(&self) -> Result<&Path> {
        std::fs::create_dir_all(&self.state).map_err(|e| {
            Error::backend(
                format!("create the state directory {}", self.state.display()),
                e.to_string(),
            )
        })?;
        Ok(&self.state)
    }

    /// `name` as a service of the configuration; an unknown name lists the services and
    /// suggests the closest.
    pub(crate) fn service(&self, name: &str) -> Result<&ServiceSpec> {
        let config = self.config()?;
        config.service(name).map_err(|_| {
            let known: Vec<String> = config.services().map(|s| s.name.to_string()).collect();
            crate::names::unknown("service", "services", name, &known, &self.config_name())
        })
    }

    /// The service's id, checked against the configuration.
    pub(crate) fn service_id(&self, name: &str) -> Result<ServiceId> {
        Ok(self.service(name)?.name.clone())
    }

    fn config_name(&self) -> String {
        self.config_path.display().to_string()
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.state.join("daemon.sock")
    }

    pub(crate) fn client(&self) -> LocalClient {
        LocalClient::new(self.socket())
    }

    /// The state directory of `env`'s local daemon: the environment's `local_state` when it
    /// has one, else this command's state directory.
    pub(crate) fn local_state(&self, env: &EnvironmentName) -> Result<PathBuf> {
        Ok(self
            .config()?
            .local_state(env.as_str())?
            .map_or_else(|| self.state.clone(), Path::to_path_buf))
    }

    /// Where `env`'s local daemon listens.
    pub(crate) fn socket_for(&self, env: &EnvironmentName) -> Result<PathBuf> {
        Ok(self.local_state(env)?.join("daemon.sock"))
    }

    /// A client of `env`'s local daemon (nothing is connected until a call).
    pub(crate) fn client_for(&self, env: &EnvironmentName) -> Result<LocalClient> {
        Ok(LocalClient::new(self.socket_for(env)?))
    }

    pub(crate) async fn store(&self) -> Result<Arc<SqliteStore>> {
        Ok(Arc::new(
            SqliteStore::open(self.state_dir()?.join("deploykit.db")).await?,
        ))
    }

    /// Where failovers are journaled and leased: `[failover] journal` (S3, shared by every
    /// machine) when configured, else the state directory's database.
    pub(crate) async fn failover_store(&self) -> Result<Arc<dyn deploykit_core::StateStore>> {
        let Some(s3) = self.config()?.failover_journal() else {
            return Ok(self.store().await?);
        };
        let store = deploykit_aws::S3StateStore::builder(s3.bucket.clone())
            .prefix(s3.prefix.clone())
            .configure(|b| b.force_path_style(crate::s3_env::path_style()))
            .build()
            .await
            .map_err(|e| e.noting(format_args!("the failover journal {s3}")))?;
        Ok(Arc::new(store))
    }

    /// A client of the daemon, once it answered: an error that says the daemon is not running,
    /// and how to start it, when nothing listens on its socket.
    pub(crate) async fn daemon(&self) -> Result<LocalClient> {
        let client = self.client();
        match client.info().await {
            Ok(_) => Ok(client),
            Err(e) if e.is_retryable() => Err(Error::backend(
                "reach the deploykit daemon",
                format!(
                    "it is not running (nothing answers on {}): start it with `deploykit daemon` \
                     beside {}, in another terminal or in the background",
                    self.socket().display(),
                    self.config_name()
                ),
            )),
            Err(e) => Err(e),
        }
    }

    /// The environment named on the command line, or the only one, or `production`.
    pub(crate) fn environment(&self, name: Option<&str>) -> Result<EnvironmentName> {
        let config = self.config()?;
        if let Some(name) = name {
            if config.environment(name).is_err() {
                let known: Vec<String> =
                    config.environments().map(|e| e.name.to_string()).collect();
                return Err(crate::names::unknown(
                    "environment",
                    "environments",
                    name,
                    &known,
                    &self.config_name(),
                ));
            }
            return EnvironmentName::new(name);
        }
        let all: Vec<_> = config
            .environments()
            .filter(|e| e.kind != EnvironmentKind::Preview)
            .collect();
        match all.as_slice() {
            [only] => Ok(only.name.clone()),
            _ if all.iter().any(|e| e.name.as_str() == "production") => {
                EnvironmentName::new("production")
            }
            [] => Err(Error::invalid(
                "environments",
                format!("{} has no environment to deploy to", self.config_name()),
            )),
            several => Err(Error::invalid(
                "--env",
                format!(
                    "{} has several environments ({}); name one with --env",
                    self.config_name(),
                    several
                        .iter()
                        .map(|e| e.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// The secrets file's provider, when the configuration names one and
    /// `DEPLOYKIT_AGE_KEY_FILE` says where the identity is.
    pub(crate) fn secrets(&self) -> Result<Option<Arc<dyn SecretProvider>>> {
        let Some(file) = self.config()?.secrets_file() else {
            return Ok(None);
        };
        let Ok(key) = std::env::var("DEPLOYKIT_AGE_KEY_FILE") else {
            return Ok(None);
        };
        let identity = Identity::from_key_file(Path::new(&key))?;
        Ok(Some(Arc::new(FileSecretProvider::open(file, &identity)?)))
    }

    /// An orchestrator over the daemon, for every environment in the configuration (one with
    /// a `local_state` of its own over its own daemon). It resumes in-flight deployments as
    /// soon as their leases allow.
    pub(crate) async fn orchestrator(&self) -> Result<Orchestrator> {
        let default = Arc::new(self.daemon().await?);
        let mut builder = Orchestrator::builder_shared(self.store().await?).config(
            OrchestratorConfig::builder()
                .poll_interval(Duration::from_millis(250))
                .lease_ttl(Duration::from_secs(10))
                .build(),
        );
        for spec in self.config()?.environments() {
            let client = match self.config()?.local_state(spec.name.as_str())? {
                Some(_) => Arc::new(self.client_for(&spec.name)?),
                None => default.clone(),
            };
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
        if let Some(policy) = self.access_policy()? {
            builder = builder.access_policy(policy);
        }
        if let Some(key) = self.config()?.verify_key() {
            let key =
                deploykit_build::attest::public_key_from_pem_file(&self.config_dir.join(key))?;
            let layout = self.config_dir.join(deploykit_config::IMAGE_LAYOUT);
            builder = builder.artifact_verifier(Arc::new(
                deploykit_build::attest::SignatureVerifier::new(
                    key,
                    deploykit_build::attest::AttestationSource::Layout(layout),
                ),
            ));
        }
        builder.open().await
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
            .open(self.state_dir()?.join("resume.log"))
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
            Output::Text => crate::out::line(text),
            Output::Json => crate::out::line(value),
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
        "artifact": s.spec.target.artifact.to_string(),
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

/// Why `claimed` (from `--actor` or `DEPLOYKIT_ACTOR`) is not taken while `user` runs the
/// command under the `[access]` of `config`.
fn refused_claim(claimed: &str, user: &str, config: &Path) -> String {
    format!(
        "{claimed:?} is not who runs this command ({user}): with [access] in {}, deploykit acts \
         as the operating system's user (leave --actor and DEPLOYKIT_ACTOR unset, or run the \
         command as {claimed})",
        config.display()
    )
}
