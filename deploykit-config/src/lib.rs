//! The declarative configuration file, `deploykit.toml`: an application's services and
//! environments — resources, scaling, health checks, strategy (rolling, blue-green, canary
//! with its steps), the analyses that watch a rollout, failure policy — deserialized into the
//! same validated types the builders make, with layered settings whose origin can be
//! explained.
//!
//! Settings layer common → environment → overrides. A setting is a plain value
//! (`[variables]`) or a reference to a secret in the encrypted secrets file (`[secrets]`,
//! see [`deploykit_core::secrets`]); the configuration never holds a secret's value.
//!
//! Errors point at the place — file, line, column, the key path and what was expected — and
//! unknown keys are errors, not silently ignored. Type errors are worded in TOML's terms
//! (`expected a whole number from 0 to 4294967295, found the string "two"`). A service with
//! nothing to run — no `command`, no `image` repository (for Kubernetes), no
//! `[[services.<name>.build]]` stage with `outputs` — is refused when the file loads, not at
//! deploy time.
//!
//! ```
//! use deploykit_config::{Config, Setting};
//! use deploykit_core::StrategySpec;
//! let config = Config::from_toml_str("deploykit.toml", r#"
//! application = "shop"
//! secrets_file = "deploykit.secrets.toml"
//! [variables]
//! LOG_LEVEL = "info"
//!
//! [analyses.errors]
//! metrics = [{ name = "error-rate", query = "errors{app='shop'}", below = 0.01, count = 3, interval = "1m" }]
//!
//! [services.web]
//! command = ["./web"]
//! port = 8080
//! health.readiness = { http = "/health", period = "5s" }
//!
//! [environments.production]
//! kind = "production"
//! replicas = 4
//! variables = { LOG_LEVEL = "warn" }
//! secrets = { DATABASE_URL = "production.database_url" }
//! [environments.production.strategy.canary]
//! steps = [{ weight = 10 }, { analysis = "errors" }, { weight = 50 }, { approval = true }]
//! "#)?;
//! let prod = config.environment("production")?;
//! assert_eq!(prod.replicas, 4);
//! assert!(matches!(&prod.strategy, StrategySpec::Canary(c) if c.steps.len() == 4));
//! let (value, origin) = config.explain("production", "LOG_LEVEL").unwrap();
//! assert_eq!(value, &Setting::Value("warn".into()));
//! assert_eq!(origin.layer, "environments.production.variables");
//! let (secret, _) = config.explain("production", "DATABASE_URL").unwrap();
//! assert_eq!(secret.to_string(), "<secret production.database_url>");
//! # Ok::<(), deploykit_core::Error>(())
//! ```
//!
//! # Logs
//!
//! `[environments.<env>.logs]` ([`Config::log_settings`], a [`LogSettings`]): rotation by size
//! (`max_file_bytes`, `keep_files`) and age (`rotate_after`), retention (`retain_for`: older
//! files leave the hot store, archived first into `archive`, a directory or `s3://bucket/prefix`
//! encrypted with the password in `password_env`), the pipeline records are shipped through
//! (`pipeline`, a [`deploykit_logs::PipelineConfig`]) and where they go (`forward`: `otlp`,
//! `webhook`, `file`). See the `logs` module's example for every key.
//!
//! # Standby and failover
//!
//! `[environments.<env>.standby]` ([`Config::standby`], a [`StandbySettings`]): the
//! environment that takes over (`environment`), the most it may be behind for an unforced
//! failover (`max_lag`, default 5 s), when a step is escalated (`step_timeout`, default 60 s),
//! whether `deploykit failover watch` fails over by itself (`automatic`), where it POSTs its
//! `FailoverStalled` alerts (`alert_webhook`), the assessment
//! (`assessment`: `quorum`, `grace`, `interval`, `probes` of `url` or `command`), the
//! PostgreSQL standby that follows the archive (`database`: `repository`, `primary_pgdata`,
//! `standby_connection`) and commands for each step (`hooks`: `fence`, `promote_database`,
//! `scale`, `switch_traffic`, `verify`). With `warm = N`, deploykit keeps the standby's
//! services in step on the standby's own local daemon, whose state directory is the standby
//! environment's `local_state` ([`Config::local_state`]; `deploykit daemon --env <standby>`
//! serves there).
//! `[failover] journal = "s3://bucket/prefix"` ([`Config::failover_journal`]) journals every
//! failover, and holds its lease, in S3 (conditional writes) instead of the state directory's
//! database, so that watchers and operators on several machines share them.
//!
//! ```
//! # use deploykit_config::Config;
//! let config = Config::from_toml_str(
//!     "deploykit.toml",
//!     r#"
//! application = "shop"
//! [environments.production]
//! kind = "production"
//! [environments.production-dr]
//! kind = "production"
//! [environments.production.standby]
//! environment = "production-dr"
//! assessment = { quorum = 1, grace = "5s", probes = [{ name = "http", url = "http://10.0.0.5/healthz" }] }
//! hooks = { switch_traffic = ["lbctl", "switch", "dr"] }
//! "#,
//! )?;
//! let standby = config.standby("production")?.expect("configured");
//! assert_eq!(standby.environment, "production-dr");
//! assert_eq!(standby.assessment.grace, std::time::Duration::from_secs(5));
//! # Ok::<(), deploykit_core::Error>(())
//! ```
//!
//! # Access
//!
//! `[access]` ([`Config::access_policy`]) is a `deploykit_core::access::AccessPolicy`: `rules`
//! (`role`, `action` or `*`, `object` as `environment/service` with `*` wildcards, `effect`
//! allow or deny), `bindings` of users or groups to roles, `groups` (user → groups), and
//! `four_eyes_in_production` (default true). It is the whole policy: what no rule allows is
//! refused. A rule that cannot match is refused when the file is read, with its place
//! (`access.rules[0].object`).
//!
//! # Notifications
//!
//! `[notifications.<name>]` ([`Config::notifications`], each a [`NotificationChannel`]) is
//! where `deploykit daemon` sends deploy events, read from the journal (each event once, also
//! across daemon restarts):
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `type` | `slack` (a Slack-compatible incoming webhook: `{"text": …}`), `webhook` (the event as JSON), `email` | required |
//! | `url` or `url_env` | the webhook's URL, or the variable holding it (a chat webhook's URL is its credential) | required for `slack`, `webhook` |
//! | `signing_key_env` | `webhook`: the variable holding the HMAC-SHA256 key; requests carry `x-deploykit-signature: sha256=<hex>` | unsigned |
//! | `smtp`, `from`, `to` | `email`: the relay (`host:port`, plain SMTP, no TLS or login: keep it on loopback or inside the network), the sender, the recipients | required for `email` |
//! | `events` | the event kinds sent ([`deploykit_core::notify::EVENT_KINDS`]), or `["*"]` | `approval_requested`, `rollback_started`, `finished` |
//! | `environments` | the environments whose events are sent (`preview-*` matches every preview) | all |
//!
//! ```toml
//! [notifications.oncall]
//! type = "email"
//! smtp = "127.0.0.1:25"
//! from = "deploykit@shop.example"
//! to = ["oncall@shop.example"]
//! environments = ["production"]
//! ```
//!
//! # Backups
//!
//! `[environments.<env>.backup]` is the environment's backup policy ([`Config::backup_policy`])
//! and what `deploykit backup agent` needs to run it ([`Config::backup_job`], a
//! [`deploykit_backup::BackupJob`]). Paths are relative to the configuration file's
//! directory; schedules are cron expressions in UTC, five fields or six with seconds first.
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `rotation` | `"<kind> <cron>"` entries (`full`, `incremental`, `differential`, `snapshot`); when two fall due together the first listed wins | required |
//! | `retention` | `{ keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within = "30d", keep_tags = [..] }`, applied after every backup | keep everything |
//! | `prune` | prune unused data after retention | `false` |
//! | `rto`, `rpo` | recovery objectives drills are measured against | `"1h"`, `"5m"` |
//! | `repository` | the repository directory (created on first use) | required by the agent |
//! | `password_env` | the environment variable holding its passphrase | `"DEPLOYKIT_REPO_PASSWORD"` |
//! | `paths` | directories or files to back up; their last components must differ | `[]` |
//! | `commands` | `[{ name = "shop.dump", command = ["pg_dump", "shop"] }]`: command outputs stored as files | `[]` |
//! | `verify` | `{ subsets = 7, full = "0 3 * * SUN" }`: a 1/`subsets` slice of the data read back after each backup (0: none), everything read back on `full` (`"off"`: never) | as shown |
//! | `drill` | `{ schedule = "0 4 1 * *", scratch = "dir" }`: restore the newest snapshot into `scratch` (default `<state>/drill/<env>`) and measure RTO/RPO (`"off"`: never) | monthly |
//! | `rehearsal` | `{ schedule = "0 5 * * MON" }`: run `deploykit failover rehearse --env <env>` (the standby database restored from its archive into scratch, promoted and checked; production untouched); needs `[environments.<env>.standby]` with a `database` | off |
//! | `retry` | `{ attempts = 3, backoff = "30s", max_backoff = "10m" }`: a failed run is tried again with exponential backoff before it counts as failed | as shown |
//! | `alert_webhook` | URL the agent's alerts (failed, missed or overdue runs) are POSTed to, Alertmanager-style JSON | none (alerts on stderr only) |
//!
//! ```
//! use deploykit_config::Config;
//! let config = Config::from_toml_str("/srv/shop/deploykit.toml", r#"
//! application = "shop"
//! [environments.production]
//! kind = "production"
//! [environments.production.backup]
//! repository = "backups/production"
//! paths = ["data"]
//! commands = [{ name = "shop.dump", command = ["pg_dump", "shop"] }]
//! rotation = ["full 0 2 * * SUN", "incremental 0 * * * *"]
//! retention = { keep_daily = 7, keep_weekly = 4 }
//! prune = true
//! rpo = "1h"
//! verify = { subsets = 7, full = "0 3 * * SUN" }
//! drill = { schedule = "0 4 1 * *" }
//! "#)?;
//! let job = config.backup_job("production")?.expect("production is backed up");
//! assert_eq!(job.repository.as_deref(), Some(std::path::Path::new("/srv/shop/backups/production")));
//! assert_eq!(job.policy.targets.rpo.as_secs(), 3600);
//! # Ok::<(), deploykit_core::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use deploykit_backup::{BackupJob, BackupPolicy};
use deploykit_build::Pipeline;
use deploykit_core::access::AccessPolicy;
use deploykit_core::analysis::AnalysisSpec;
use deploykit_core::build::BuildStage;
use deploykit_core::model::{
    Autoscale, EnvironmentKind, EnvironmentSpec, FailurePolicy, Quantity, Resources, ServiceSpec,
};
use deploykit_core::secrets::SecretProvider;
use deploykit_core::{Error, Result};
pub use logs::{ForwardSettings, LogSettings};
pub use notify::{ChannelTarget, NotificationChannel, Url as ChannelUrl};
pub use service::IMAGE_LAYOUT;
pub use standby::{
    AssessmentSettings, HOOK_STEPS, ProbeCheck, ProbeSettings, StandbyDatabase, StandbySettings,
};

mod notify;

mod backup;
mod flags;
mod health;
mod logs;
mod rollout;
mod service;
mod standby;
mod toml_words;
mod traffic;

/// Where a value was found: the layer (`variables`, `environments.<env>.variables`,
/// `overrides.<env>`), the file and the line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The layer that set the value.
    pub layer: String,
    /// The file.
    pub file: String,
    /// The 1-based line.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}:{})", self.layer, self.file, self.line)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    application: String,
    secrets_file: Option<String>,
    #[serde(default)]
    variables: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    secrets: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    analyses: BTreeMap<String, Spanned<rollout::AnalysisToml>>,
    #[serde(default)]
    services: BTreeMap<String, Spanned<service::ServiceToml>>,
    #[serde(default)]
    environments: BTreeMap<String, Spanned<EnvironmentToml>>,
    #[serde(default)]
    overrides: BTreeMap<String, BTreeMap<String, Spanned<String>>>,
    /// A flagd flag file's name, or the flag document inline.
    flags: Option<Spanned<toml::Value>>,
    #[serde(default)]
    notifications: BTreeMap<String, Spanned<notify::ChannelToml>>,
    failover: Option<FailoverToml>,
    access: Option<Spanned<toml::Value>>,
    build: Option<BuildToml>,
}

/// `[build]`: settings of every service's builds.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BuildToml {
    cache: Option<Spanned<String>>,
    signing_key: Option<PathBuf>,
    verify_key: Option<PathBuf>,
}

/// `[failover]`: settings of every environment's failovers.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailoverToml {
    journal: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResourcesToml {
    cpu_request_millis: Option<u32>,
    cpu_limit_millis: Option<u32>,
    memory_request_mib: Option<u32>,
    memory_limit_mib: Option<u32>,
}

impl ResourcesToml {
    pub(crate) fn to_resources(&self) -> Resources {
        let mut resources = Resources::default();
        resources.cpu_request_millis = self.cpu_request_millis;
        resources.cpu_limit_millis = self.cpu_limit_millis;
        resources.memory_request_mib = self.memory_request_mib;
        resources.memory_limit_mib = self.memory_limit_mib;
        resources
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AutoscaleToml {
    min_replicas: u32,
    max_replicas: u32,
    target_cpu_percent: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentToml {
    kind: String,
    #[serde(default)]
    replicas: Option<u32>,
    autoscale: Option<AutoscaleToml>,
    resources: Option<ResourcesToml>,
    health: Option<health::HealthToml>,
    failure_policy: Option<String>,
    progress_deadline: Option<String>,
    revision_history_limit: Option<u32>,
    #[serde(default)]
    variables: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    secrets: BTreeMap<String, Spanned<String>>,
    strategy: Option<rollout::StrategyToml>,
    backup: Option<backup::BackupToml>,
    logs: Option<logs::LogsToml>,
    standby: Option<standby::StandbyToml>,
    local_state: Option<String>,
}

/// An effective setting of an environment: a plain value, or a reference to a secret (whose
/// value the configuration never holds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Setting {
    /// A plain value.
    Value(String),
    /// A secret, by its key path in the secrets file.
    Secret(String),
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Setting::Value(v) => f.write_str(v),
            Setting::Secret(key) => write!(f, "<secret {key}>"),
        }
    }
}

/// A loaded, validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The application's name.
    pub application: String,
    secrets_file: Option<PathBuf>,
    analyses: BTreeMap<String, AnalysisSpec>,
    services: BTreeMap<String, ServiceSpec>,
    build: BTreeMap<String, Vec<Arc<dyn BuildStage>>>,
    /// Image repositories, by service.
    images: BTreeMap<String, String>,
    environments: BTreeMap<String, EnvironmentSpec>,
    /// Backup policies with what the agent needs to run them, by environment.
    backups: BTreeMap<String, BackupJob>,
    /// How logs are kept and shipped, by environment (only those with a logs table).
    logs: BTreeMap<String, LogSettings>,
    /// Standbys, by the environment they stand by for.
    standbys: BTreeMap<String, StandbySettings>,
    local_states: BTreeMap<String, PathBuf>,
    /// Effective settings per environment, each with where it came from.
    settings: BTreeMap<String, BTreeMap<String, (Setting, Origin)>>,
    flags: Option<deploykit_flags::FlagSet>,
    notifications: Vec<NotificationChannel>,
    failover_journal: Option<S3Location>,
    access: Option<AccessPolicy>,
    build_cache: Option<BuildCacheLocation>,
    signing_key: Option<PathBuf>,
    verify_key: Option<PathBuf>,
}

/// Where the build cache is (`[build] cache`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildCacheLocation {
    /// A directory (relative paths are relative to the configuration file).
    Directory(PathBuf),
    /// An S3 location, shared by every machine that builds.
    S3(S3Location),
}

/// An S3 location, `s3://bucket/prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// The key prefix (no trailing `/`; empty for the bucket's root).
    pub prefix: String,
}

impl S3Location {
    /// `s3://bucket[/prefix]`; `None` for anything else (an empty bucket included).
    pub fn parse(text: &str) -> Option<S3Location> {
        let rest = text.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        (!bucket.is_empty()).then(|| S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.trim_end_matches('/').to_string(),
        })
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

struct Located<'a> {
    file: &'a str,
    text: &'a str,
}

impl Located<'_> {
    fn error(&self, span: Range<usize>, path: &str, message: impl fmt::Display) -> Error {
        let (line, column) = position(self.text, span.start);
        let place = format!("{}:{line}:{column}", self.file);
        let field = if path.is_empty() {
            place
        } else {
            format!("{place}: {path}")
        };
        Error::invalid(field, message.to_string())
    }

    /// A toml or serde error at `path`, its message in TOML words (see [`toml_words`]).
    fn toml_error(&self, e: &toml::de::Error, path: &str) -> Error {
        let span = e.span().unwrap_or(0..0);
        let value_text = self.text.get(span.start..).unwrap_or_default();
        let message = toml_words::rewrite(e.message(), value_text);
        self.error(span, path, message)
    }

    fn origin(&self, layer: &str, span: &Range<usize>) -> Origin {
        Origin {
            layer: layer.to_string(),
            file: self.file.to_string(),
            line: position(self.text, span.start).0,
        }
    }
}

fn duration(at: &Located<'_>, span: Range<usize>, path: &str, text: &str) -> Result<Duration> {
    humantime::parse_duration(text).map_err(|e| {
        at.error(
            span,
            path,
            format!("{text:?} is not a duration like \"30s\" or \"10m\": {e}"),
        )
    })
}

/// `url` when it is an http:// or https:// URL.
fn http_url(at: &Located<'_>, url: &Spanned<String>, path: &str) -> Result<String> {
    let text = url.get_ref();
    if text.starts_with("http://") || text.starts_with("https://") {
        Ok(text.clone())
    } else {
        Err(at.error(
            url.span(),
            path,
            format!("{text:?} is not an http:// or https:// URL"),
        ))
    }
}

fn quantity(at: &Located<'_>, span: Range<usize>, path: &str, v: &toml::Value) -> Result<Quantity> {
    match v {
        toml::Value::Integer(n) => u32::try_from(*n).map(Quantity::Count).map_err(|_| {
            at.error(
                span,
                path,
                format!("{n} is not a whole number from 0 to {}", u32::MAX),
            )
        }),
        toml::Value::String(s) if s.ends_with('%') => s[..s.len() - 1]
            .trim()
            .parse::<u32>()
            .map(Quantity::Percent)
            .map_err(|_| {
                at.error(
                    span,
                    path,
                    format!("{s:?} is not a percentage like \"25%\""),
                )
            }),
        other => Err(at.error(
            span,
            path,
            format!(
                "expected a count or a percentage like \"25%\", found {}",
                toml_words::describe(other)
            ),
        )),
    }
}

impl Config {
    /// Parse and validate `text`, reporting errors against `file`.
    pub fn from_toml_str(file: &str, text: &str) -> Result<Self> {
        let at = Located { file, text };
        let deserializer = toml::Deserializer::parse(text).map_err(|e| at.toml_error(&e, ""))?;
        let parsed: FileToml = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            // The key path, without the wrapper `Spanned` adds.
            let path: Vec<String> = e
                .path()
                .to_string()
                .split('.')
                .filter(|segment| !segment.starts_with("$__"))
                .map(str::to_string)
                .collect();
            let path = path.join(".");
            at.toml_error(e.inner(), if path == "." { "" } else { &path })
        })?;
        let analyses = rollout::analyses(&at, &parsed.analyses)?;
        let mut services = BTreeMap::new();
        let mut build = BTreeMap::new();
        let mut images = BTreeMap::new();
        for (name, spanned) in &parsed.services {
            let loaded = service::load(&at, name, spanned)?;
            if !loaded.build.is_empty() {
                build.insert(name.clone(), loaded.build);
            }
            if let Some(image) = loaded.image {
                images.insert(name.clone(), image);
            }
            services.insert(name.clone(), loaded.spec);
        }
        let mut environments = BTreeMap::new();
        let mut backups = BTreeMap::new();
        let mut log_settings = BTreeMap::new();
        let mut standbys = BTreeMap::new();
        let defined: std::collections::BTreeSet<String> =
            parsed.environments.keys().cloned().collect();
        let base = Path::new(file).parent().unwrap_or(Path::new(""));
        let local_states: BTreeMap<String, PathBuf> = parsed
            .environments
            .iter()
            .filter_map(|(name, e)| {
                let dir = e.get_ref().local_state.as_ref()?;
                Some((name.clone(), backup::resolve(base, dir)))
            })
            .collect();
        let mut settings = BTreeMap::new();
        for (name, spanned) in &parsed.environments {
            let span = spanned.span();
            let path = format!("environments.{name}");
            let e = spanned.get_ref();
            let kind = match e.kind.as_str() {
                "development" => EnvironmentKind::Development,
                "staging" => EnvironmentKind::Staging,
                "production" => EnvironmentKind::Production,
                "preview" => EnvironmentKind::Preview,
                other => EnvironmentKind::Custom(other.to_string()),
            };
            let mut spec = EnvironmentSpec::builder()
                .name(name.as_str())
                .kind(kind)
                .build()
                .map_err(|err| at.error(span.clone(), &path, err))?;
            if let Some(r) = e.replicas {
                spec.replicas = r;
            }
            if let Some(a) = &e.autoscale {
                let mut autoscale = Autoscale::builder()
                    .min_replicas(a.min_replicas)
                    .max_replicas(a.max_replicas)
                    .build();
                if let Some(t) = a.target_cpu_percent {
                    autoscale.target_cpu_percent = t;
                }
                spec.autoscale = Some(autoscale);
            }
            if let Some(r) = &e.resources {
                spec.resources = r.to_resources();
            }
            if let Some(h) = &e.health {
                spec.health = Some(health::checks(&at, &format!("{path}.health"), h)?);
            }
            if let Some(p) = &e.failure_policy {
                spec.failure_policy = match p.as_str() {
                    "rollback" => FailurePolicy::Rollback,
                    "freeze" => FailurePolicy::Freeze,
                    "pause" => FailurePolicy::Pause,
                    other => {
                        return Err(at.error(
                            span.clone(),
                            &format!("{path}.failure_policy"),
                            format!("{other:?}: expected \"rollback\", \"freeze\" or \"pause\""),
                        ));
                    }
                };
            }
            if let Some(d) = &e.progress_deadline {
                spec.progress_deadline =
                    duration(&at, span.clone(), &format!("{path}.progress_deadline"), d)?;
            }
            if let Some(n) = e.revision_history_limit {
                spec.revision_history_limit = n;
            }
            if let Some(st) = &e.strategy {
                spec.strategy = rollout::strategy(&at, span.clone(), &path, st, &analyses)?;
            }
            if let Some(b) = &e.backup {
                let job = backup::load(&at, span.clone(), name, &format!("{path}.backup"), b)?;
                backups.insert(name.clone(), job);
            }
            if let Some(l) = &e.logs {
                let settings = logs::load(&at, &format!("{path}.logs"), l)?;
                log_settings.insert(name.clone(), settings);
            }
            spec.validate()
                .map_err(|err| at.error(span.clone(), &path, err))?;
            // Layered settings: common, then the environment's, then overrides; a later layer
            // replaces an earlier one whether it holds a value or a secret.
            let mut effective: BTreeMap<String, (Setting, Origin)> = BTreeMap::new();
            let layers = [
                ("variables".to_string(), &parsed.variables, &parsed.secrets),
                (format!("{path}.variables"), &e.variables, &e.secrets),
            ];
            for (layer, vars, secrets) in layers {
                let secrets_layer = layer.replace("variables", "secrets");
                for (k, v) in secrets {
                    if let Some(plain) = vars.get(k) {
                        return Err(at.error(
                            plain.span(),
                            &format!("{layer}.{k}"),
                            format!("{k} is also in {secrets_layer}; a setting is a value or a secret, not both"),
                        ));
                    }
                    let origin = at.origin(&secrets_layer, &v.span());
                    effective.insert(k.clone(), (Setting::Secret(v.get_ref().clone()), origin));
                }
                for (k, v) in vars {
                    let origin = at.origin(&layer, &v.span());
                    effective.insert(k.clone(), (Setting::Value(v.get_ref().clone()), origin));
                }
            }
            if let Some(o) = parsed.overrides.get(name) {
                for (k, v) in o {
                    let origin = at.origin(&format!("overrides.{name}"), &v.span());
                    effective.insert(k.clone(), (Setting::Value(v.get_ref().clone()), origin));
                }
            }
            for (k, (setting, _)) in &effective {
                match setting {
                    Setting::Value(v) => spec.variables.insert(k.clone(), v.clone()),
                    Setting::Secret(key) => spec.secrets.insert(k.clone(), key.clone()),
                };
            }
            spec.validate()
                .map_err(|err| at.error(span.clone(), &path, err))?;
            settings.insert(name.clone(), effective);
            environments.insert(name.clone(), spec);
        }
        // Once every environment is known: a standby's settings are checked against it.
        for (name, spanned) in &parsed.environments {
            if let Some(st) = &spanned.get_ref().standby {
                let loaded = standby::load(
                    &at,
                    &format!("environments.{name}.standby"),
                    name,
                    st,
                    &environments,
                    &defined,
                    &local_states,
                )?;
                standbys.insert(name.clone(), loaded);
            }
        }
        // A scheduled rehearsal restores the standby database from its archive.
        for (name, job) in &backups {
            let has_database = standbys
                .get(name)
                .is_some_and(|st: &StandbySettings| st.database.is_some());
            if job.rehearsal.cron.is_some() && !has_database {
                return Err(Error::invalid(
                    format!("{file}: environments.{name}.backup.rehearsal.schedule"),
                    format!(
                        "rehearses a failover, but environments.{name}.standby has no database: \
                         a rehearsal restores the standby database from its archive"
                    ),
                ));
            }
        }
        for name in parsed.overrides.keys() {
            if !environments.contains_key(name) {
                return Err(Error::invalid(
                    format!("{file}: overrides.{name}"),
                    "overrides an environment that is not defined",
                ));
            }
        }
        let flags = parsed
            .flags
            .as_ref()
            .map(|f| flags::load(&at, f, &environments))
            .transpose()?;
        let notifications = notify::load(&at, &parsed.notifications, &environments)?;
        let failover_journal = parsed
            .failover
            .as_ref()
            .and_then(|f| f.journal.as_ref())
            .map(|journal| {
                S3Location::parse(journal.get_ref()).ok_or_else(|| {
                    at.error(
                        journal.span(),
                        "failover.journal",
                        format!(
                            "{:?} is not an S3 location: expected s3://bucket/prefix (without \
                             it, failovers are journaled in the state directory's database)",
                            journal.get_ref()
                        ),
                    )
                })
            })
            .transpose()?;
        let build_cache =
            parsed
                .build
                .as_ref()
                .and_then(|b| b.cache.as_ref())
                .map(|cache| {
                    let text = cache.get_ref();
                    if text.starts_with("s3://") {
                        S3Location::parse(text)
                            .map(BuildCacheLocation::S3)
                            .ok_or_else(|| {
                                at.error(
                            cache.span(),
                            "build.cache",
                            format!("{text:?} is not an S3 location: expected s3://bucket/prefix"),
                        )
                            })
                    } else if text.trim().is_empty() {
                        Err(at.error(
                            cache.span(),
                            "build.cache",
                            "is empty: give a directory or s3://bucket/prefix (without it, the \
                         cache is the state directory's build-cache/)",
                        ))
                    } else {
                        Ok(BuildCacheLocation::Directory(PathBuf::from(text)))
                    }
                })
                .transpose()?;
        let access = parsed
            .access
            .as_ref()
            .map(|access| {
                access
                    .get_ref()
                    .clone()
                    .try_into::<AccessPolicy>()
                    .map_err(|e| {
                        // The policy's own errors name their field (`access.rules[0].object`).
                        let message = e.message().trim();
                        let (field, reason) = message
                            .strip_prefix("invalid ")
                            .and_then(|m| m.split_once(": "))
                            .filter(|(field, _)| field.starts_with("access."))
                            .unwrap_or(("access", message));
                        at.error(access.span(), field, reason.to_string())
                    })
            })
            .transpose()?;
        let secrets_file = parsed.secrets_file.map(|f| {
            let relative_to = Path::new(file).parent().unwrap_or(Path::new(""));
            relative_to.join(f)
        });
        Ok(Config {
            application: parsed.application,
            secrets_file,
            analyses,
            services,
            build,
            images,
            environments,
            backups,
            logs: log_settings,
            standbys,
            local_states,
            settings,
            flags,
            notifications,
            failover_journal,
            build_cache,
            signing_key: parsed.build.as_ref().and_then(|b| b.signing_key.clone()),
            verify_key: parsed.build.as_ref().and_then(|b| b.verify_key.clone()),
            access,
        })
    }

    /// Read and load the file at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid(
                path.display().to_string(),
                format!("cannot read the configuration: {e}"),
            )
        })?;
        Self::from_toml_str(&path.display().to_string(), &text)
    }

    /// A service by name.
    pub fn service(&self, name: &str) -> Result<&ServiceSpec> {
        self.services
            .get(name)
            .ok_or_else(|| Error::not_found(format!("service {name} in the configuration")))
    }

    /// An environment by name, with its effective variables.
    pub fn environment(&self, name: &str) -> Result<&EnvironmentSpec> {
        self.environments
            .get(name)
            .ok_or_else(|| Error::not_found(format!("environment {name} in the configuration")))
    }

    /// How environment `name`'s data is backed up (`[environments.<name>.backup]`), if it is:
    /// schedule, retention, recovery objectives. Fails if there is no such environment.
    pub fn backup_policy(&self, name: &str) -> Result<Option<&BackupPolicy>> {
        self.environment(name)?;
        Ok(self.backups.get(name).map(|job| &job.policy))
    }

    /// Everything `deploykit backup agent` needs to run environment `name`'s backups
    /// (`[environments.<name>.backup]`: the policy, repository, paths and commands, verify and
    /// drill schedules, retries, alert webhook), if it has a backup table. Fails if there is
    /// no such environment.
    pub fn backup_job(&self, name: &str) -> Result<Option<&BackupJob>> {
        self.environment(name)?;
        Ok(self.backups.get(name))
    }

    /// Environment `name`'s standby (`[environments.<name>.standby]`), if it has one. Fails if
    /// there is no such environment.
    pub fn standby(&self, name: &str) -> Result<Option<&StandbySettings>> {
        self.environment(name)?;
        Ok(self.standbys.get(name))
    }

    /// Who may do what (`[access]`: rules, bindings, groups, four eyes), if the file sets it:
    /// then the CLI acts as the operating system's user who runs it, and checks every
    /// deployment action and failover against this policy.
    pub fn access_policy(&self) -> Option<&AccessPolicy> {
        self.access.as_ref()
    }

    /// Where the build cache is (`[build] cache`): a directory or an S3 location; `None`: the
    /// state directory's `build-cache/`.
    pub fn build_cache(&self) -> Option<&BuildCacheLocation> {
        self.build_cache.as_ref()
    }

    /// The ed25519 private key (PKCS#8 PEM, `[build] signing_key`, relative to the
    /// configuration file) that signs every image's provenance and SBOM.
    pub fn signing_key(&self) -> Option<&Path> {
        self.signing_key.as_deref()
    }

    /// The ed25519 public key (PEM, `[build] verify_key`) every deployed image must carry a
    /// provenance statement signed by; `None`: nothing is checked.
    pub fn verify_key(&self) -> Option<&Path> {
        self.verify_key.as_deref()
    }

    /// Where every failover is journaled and its lease held (`[failover] journal`), when not in
    /// the state directory's database: an S3 location that the watchers and operators of
    /// several machines share.
    pub fn failover_journal(&self) -> Option<&S3Location> {
        self.failover_journal.as_ref()
    }

    /// The state directory of the environment's own local daemon (`local_state`, relative to
    /// the configuration file), when it has one; `None`: the daemon of the command's state
    /// directory. Fails if there is no such environment.
    pub fn local_state(&self, name: &str) -> Result<Option<&Path>> {
        self.environment(name)?;
        Ok(self.local_states.get(name).map(PathBuf::as_path))
    }

    /// How an environment's logs are kept and shipped (the defaults when it has no logs
    /// table). Fails if there is no such environment.
    pub fn log_settings(&self, name: &str) -> Result<LogSettings> {
        self.environment(name)?;
        Ok(self.logs.get(name).cloned().unwrap_or_default())
    }

    /// Every environment's backup job, by environment name.
    pub fn backup_jobs(&self) -> impl Iterator<Item = &BackupJob> {
        self.backups.values()
    }

    /// The container image repository (no tag or digest) service `name` runs on Kubernetes,
    /// from its `image` key; `None` when it has none. Fails if there is no such service.
    pub fn image(&self, name: &str) -> Result<Option<&str>> {
        self.service(name)?;
        Ok(self.images.get(name).map(String::as_str))
    }

    /// Every service, by name.
    pub fn services(&self) -> impl Iterator<Item = &ServiceSpec> {
        self.services.values()
    }

    /// Every environment, by name.
    pub fn environments(&self) -> impl Iterator<Item = &EnvironmentSpec> {
        self.environments.values()
    }

    /// The build pipeline of `service`: its `[[services.<name>.build]]` stages, then its
    /// `[services.<name>.package]` image, written to the OCI layout `.deploykit/images` of the
    /// configuration's directory (empty if it has none).
    pub fn pipeline(&self, service: &str) -> Result<Pipeline> {
        self.service(service)?;
        let stages = self.build.get(service).cloned().unwrap_or_default();
        Pipeline::new(stages)
    }

    /// A named analysis from `[analyses.<name>]`.
    pub fn analysis(&self, name: &str) -> Result<&AnalysisSpec> {
        self.analyses
            .get(name)
            .ok_or_else(|| Error::not_found(format!("analysis {name} in the configuration")))
    }

    /// The notification channels (`[notifications.<name>]`), by name.
    pub fn notifications(&self) -> &[NotificationChannel] {
        &self.notifications
    }

    /// The feature flags: the flagd file named by `flags` (relative to the configuration
    /// file) or the inline `[flags]` document; `None` when the configuration has neither.
    pub fn flags(&self) -> Option<&deploykit_flags::FlagSet> {
        self.flags.as_ref()
    }

    /// The secrets file named by `secrets_file`, relative to the configuration file.
    pub fn secrets_file(&self) -> Option<&Path> {
        self.secrets_file.as_deref()
    }

    /// The effective setting of `name` in `environment` — a value, or a secret reference —
    /// and where it came from.
    pub fn explain(&self, environment: &str, name: &str) -> Option<(&Setting, &Origin)> {
        self.settings
            .get(environment)?
            .get(name)
            .map(|(s, o)| (s, o))
    }

    /// Every effective setting of `environment`, by name, with its origin.
    pub fn settings(&self, environment: &str) -> impl Iterator<Item = (&str, &Setting, &Origin)> {
        self.settings
            .get(environment)
            .into_iter()
            .flatten()
            .map(|(k, (s, o))| (k.as_str(), s, o))
    }

    /// Check that `provider` has every secret the services and environments reference; the
    /// error names the first missing one and where it is referenced.
    pub async fn check_secrets(&self, provider: &dyn SecretProvider) -> Result<()> {
        for (env, settings) in &self.settings {
            for (name, (setting, origin)) in settings {
                if let Setting::Secret(key) = setting {
                    provider.get(key).await.map_err(|e| {
                        e.noting(format_args!(
                            "referenced as {name} in environment {env} at {origin}"
                        ))
                    })?;
                }
            }
        }
        for service in self.services.values() {
            for (name, key) in &service.secrets {
                provider.get(key).await.map_err(|e| {
                    e.noting(format_args!(
                        "referenced as {name} by service {}",
                        service.name
                    ))
                })?;
            }
        }
        Ok(())
    }
}
