//! The daemon's log agent: what `[environments.<env>.logs]` asks of it beside rotation —
//! shipping every service's records through the pipeline to the forwarders (each with retries
//! and a disk backlog), and moving old files out of the hot store into the encrypted archive.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deploykit_backup::{RepoKey, RepoOptions, Repository};
use deploykit_config::{ForwardSettings, LogSettings, Setting};
use deploykit_core::secrets::{ExposeSecret, SecretProvider};
use deploykit_core::{Error, Result};
use deploykit_local::LocalLogs;
use deploykit_local::logs::{LogPolicy, apply_retention};
use deploykit_logs::{
    ArchiveForwarder, ArchiveOptions, Fanout, FileForwarder, Forwarder, LogSelector, LogShipper,
    OtlpForwarder, Pipeline, PipelineConfig, Reliable, ReliableOptions, WebhookForwarder,
};
use tokio::task::JoinHandle;

use crate::backup_copy::Location;

/// How often retention looks for old files.
const RETENTION_EVERY: Duration = Duration::from_secs(600);
/// How often the shipping cursor is saved.
const CURSOR_EVERY: Duration = Duration::from_secs(5);
/// How far before the saved cursor a restarted shipper starts: records of different
/// instances reach the shipper up to a poll apart, so a little is sent again rather than
/// anything skipped (at least once).
const CURSOR_OVERLAP_NS: i64 = 2_000_000_000;

/// The rotation policy `settings` ask for.
pub(crate) fn policy(settings: &LogSettings) -> LogPolicy {
    LogPolicy {
        max_bytes: settings.max_file_bytes,
        keep: settings.keep_files,
        max_age: settings.rotate_after,
    }
}

/// The running agent; [`LogAgent::stop`] ships what is queued and stops.
pub(crate) struct LogAgent {
    shipping: Option<Shipping>,
    retention: Option<JoinHandle<()>>,
}

struct Shipping {
    shipper: Arc<LogShipper>,
    pipeline: Pipeline,
    cursor: Cursor,
    saver: JoinHandle<()>,
}

/// Where shipping got to, per service, kept in `<state>/log-shipping.json` so that a daemon
/// started again ships on from there.
#[derive(Clone)]
struct Cursor {
    path: PathBuf,
    services: Vec<String>,
}

impl Cursor {
    fn load(&self) -> std::collections::BTreeMap<String, i64> {
        std::fs::read(&self.path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn save_through(&self, through: &[Option<i64>]) {
        let mut saved = self.load();
        for (service, through) in self.services.iter().zip(through.iter().copied()) {
            if let Some(through) = through {
                saved.insert(service.clone(), through);
            }
        }
        let temporary = self.path.with_extension("json.tmp");
        let written = serde_json::to_vec(&saved)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(&temporary, json))
            .and_then(|()| std::fs::rename(&temporary, &self.path));
        if let Err(error) = written {
            tracing::warn!(path = %self.path.display(), "cannot save the log shipping cursor: {error}");
        }
    }
}

impl LogAgent {
    /// Starts what `settings` ask for (nothing if they ask for neither forwarders nor
    /// retention). `secrets` are the values the pipeline redacts.
    pub(crate) async fn start(
        settings: &LogSettings,
        logs: LocalLogs,
        log_dir: PathBuf,
        environment: &str,
        state_dir: &Path,
        services: Vec<String>,
        secrets: Vec<String>,
    ) -> Result<LogAgent> {
        let mut agent = LogAgent {
            shipping: None,
            retention: None,
        };
        if !settings.forward.is_empty() {
            let mut destinations: Vec<Arc<dyn Forwarder>> = Vec::new();
            for (index, forward) in settings.forward.iter().enumerate() {
                let inner = forwarder(forward)?;
                let backlog = state_dir.join("log-backlog").join(index.to_string());
                destinations.push(Arc::new(Reliable::open(
                    inner,
                    backlog,
                    ReliableOptions::default(),
                )?));
            }
            let config = match &settings.pipeline {
                Some(config) => config.clone(),
                None => PipelineConfig::from_toml_str("")?,
            };
            let pipeline = Pipeline::start(&config, &secrets, Arc::new(Fanout::new(destinations)))?;
            let cursor = Cursor {
                path: state_dir.join("log-shipping.json"),
                services: services.clone(),
            };
            let saved = cursor.load();
            let now_ns = deploykit_local::logs::now_ns();
            // A service shipped before goes on from where it got to; a new one from now.
            let selectors = services
                .iter()
                .map(|service| {
                    let since = saved
                        .get(service)
                        .map_or(now_ns, |through| through.saturating_sub(CURSOR_OVERLAP_NS));
                    LogSelector::service(service.as_str()).since_ns(since)
                })
                .collect();
            let shipper = Arc::new(LogShipper::start(
                Arc::new(logs),
                selectors,
                pipeline.input(),
            ));
            // While running, the cursor saved is the one of a period ago: what was sent into
            // the pipeline that long ago has been forwarded or backlogged on disk by now, so a
            // daemon that dies does not skip what its queue held (at least once).
            let saver = tokio::spawn({
                let (cursor, shipper) = (cursor.clone(), shipper.clone());
                async move {
                    let mut every = tokio::time::interval(CURSOR_EVERY);
                    let mut previous: Option<Vec<Option<i64>>> = None;
                    loop {
                        every.tick().await;
                        if let Some(previous) = &previous {
                            cursor.save_through(previous);
                        }
                        previous = Some(shipper.shipped_through_ns());
                    }
                }
            });
            agent.shipping = Some(Shipping {
                shipper,
                pipeline,
                cursor,
                saver,
            });
        }
        if let Some(max_age) = settings.retain_for {
            let archive: Option<Arc<dyn Forwarder>> = match &settings.archive {
                Some(location) => {
                    let password_env = settings.password_env.as_deref().unwrap_or_default();
                    Some(Arc::new(archive(location, password_env).await?))
                }
                None => None,
            };
            let policy = policy(settings);
            let environment = environment.to_string();
            agent.retention = Some(tokio::spawn(async move {
                let mut every = tokio::time::interval(RETENTION_EVERY);
                loop {
                    every.tick().await;
                    let outcome = apply_retention(
                        &log_dir,
                        &policy,
                        &environment,
                        max_age,
                        SystemTime::now(),
                        archive.as_deref(),
                    )
                    .await;
                    match outcome {
                        Ok(report) if report.files_deleted > 0 => tracing::info!(
                            archived = report.records_archived,
                            files = report.files_deleted,
                            bytes = report.bytes_freed,
                            "old logs left the hot store"
                        ),
                        Ok(_) => {}
                        Err(error) => tracing::warn!("log retention: {error}; will retry"),
                    }
                }
            }));
        }
        Ok(agent)
    }

    /// Stops shipping (what was queued is delivered or kept in the backlogs) and retention.
    pub(crate) async fn stop(self) -> Result<()> {
        if let Some(task) = self.retention {
            task.abort();
        }
        if let Some(shipping) = self.shipping {
            shipping.saver.abort();
            let _ = shipping.saver.await;
            let shipper = Arc::try_unwrap(shipping.shipper)
                .map_err(|_| Error::backend("stop log shipping", "the shipper is still in use"))?;
            let through = shipper.shipped_through_ns();
            let shipped = shipper.stop().await;
            let stats = shipping.pipeline.close().await?;
            // Saved once the pipeline delivered (or backlogged) everything it was given.
            shipping.cursor.save_through(&through);
            tracing::info!(records = stats.records_out, "log shipping stopped");
            shipped?;
        }
        Ok(())
    }
}

/// The secret values of `environment`'s settings, for redaction (those that cannot be read
/// are skipped: a value the daemon cannot read, its instances cannot either).
pub(crate) async fn secret_values(
    config: &deploykit_config::Config,
    environment: &str,
    provider: Option<&Arc<dyn SecretProvider>>,
) -> Vec<String> {
    let Some(provider) = provider else {
        return Vec::new();
    };
    let mut values = Vec::new();
    for (_, setting, _) in config.settings(environment) {
        if let Setting::Secret(key) = setting
            && let Ok(secret) = provider.get(key).await
        {
            values.push(secret.value.expose_secret().to_string());
        }
    }
    values
}

fn forwarder(settings: &ForwardSettings) -> Result<Arc<dyn Forwarder>> {
    Ok(match settings {
        ForwardSettings::Otlp { endpoint, headers } => {
            let mut otlp = OtlpForwarder::new(endpoint)?;
            for (name, value) in resolve_headers(headers)? {
                otlp = otlp.with_header(&name, &value)?;
            }
            Arc::new(otlp)
        }
        ForwardSettings::Webhook {
            url,
            signing_key_env,
            headers,
        } => {
            let mut webhook = WebhookForwarder::new(url)?;
            if let Some(var) = signing_key_env {
                webhook = webhook.with_signing_key(env_value(var)?.into_bytes())?;
            }
            for (name, value) in resolve_headers(headers)? {
                webhook = webhook.with_header(&name, &value)?;
            }
            Arc::new(webhook)
        }
        ForwardSettings::File {
            dir,
            max_file_bytes,
        } => Arc::new(FileForwarder::create(dir, "logs", *max_file_bytes)?),
        other => {
            return Err(Error::invalid(
                "logs.forward",
                format!("{other:?} is not supported by this daemon"),
            ));
        }
    })
}

/// Headers whose name ends in `_env` take their value from that variable.
fn resolve_headers(
    headers: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(String, String)>> {
    headers
        .iter()
        .map(|(name, value)| match name.strip_suffix("_env") {
            Some(header) => Ok((header.to_string(), env_value(value)?)),
            None => Ok((name.clone(), value.clone())),
        })
        .collect()
}

fn env_value(var: &str) -> Result<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Ok(value),
        _ => Err(Error::invalid(
            var,
            "is not set (deploykit.toml's logs settings name it)",
        )),
    }
}

/// The archive repository at `location` (created on first use), as a forwarder.
async fn archive(location: &str, password_env: &str) -> Result<ArchiveForwarder> {
    let target = Location::parse("logs.archive", location)?
        .target(None)
        .await?;
    let key = RepoKey::passphrase(env_value(password_env)?);
    let repo = match Repository::open(target.clone(), &key).await {
        Ok(repo) => repo,
        Err(Error::NotFound { .. }) => {
            Repository::init(target, &key, RepoOptions::default()).await?
        }
        Err(error) => return Err(error),
    };
    Ok(ArchiveForwarder::new(repo, ArchiveOptions::default()))
}
