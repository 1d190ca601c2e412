//! The declarative configuration file, `deploykit.toml`: an application's services and
//! environments, deserialized into the same validated types the builders make, with layered
//! variables whose origin can be explained.
//!
//! Errors point at the place — file, line, column, the key path and what was expected — and
//! unknown keys are errors, not silently ignored.
//!
//! ```
//! use deploykit_core::config::Config;
//! let config = Config::from_toml_str("deploykit.toml", r#"
//! application = "shop"
//! [variables]
//! LOG_LEVEL = "info"
//!
//! [services.web]
//! command = ["./web"]
//! port = 8080
//! health.readiness = { http = "/health", period = "5s" }
//!
//! [environments.production]
//! kind = "production"
//! replicas = 4
//! strategy.rolling = { max_surge = "25%", max_unavailable = 1 }
//! variables = { LOG_LEVEL = "warn" }
//! "#)?;
//! let prod = config.environment("production")?;
//! assert_eq!(prod.replicas, 4);
//! let (value, origin) = config.explain("production", "LOG_LEVEL").unwrap();
//! assert_eq!((value, origin.layer.as_str()), ("warn", "environments.production.variables"));
//! # Ok::<(), deploykit_core::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Error, Result};
use crate::model::{
    EnvironmentKind, EnvironmentSpec, HealthChecks, Probe, ProbeAction, Quantity, RollingSpec,
    ServiceSpec,
};
use crate::strategy::{BlueGreenSpec, StrategySpec};

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
    #[serde(default)]
    variables: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    services: BTreeMap<String, Spanned<ServiceToml>>,
    #[serde(default)]
    environments: BTreeMap<String, Spanned<EnvironmentToml>>,
    #[serde(default)]
    overrides: BTreeMap<String, BTreeMap<String, Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceToml {
    #[serde(default)]
    command: Vec<String>,
    port: Option<u16>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    health: HealthToml,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthToml {
    readiness: Option<ProbeToml>,
    liveness: Option<ProbeToml>,
    startup: Option<ProbeToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeToml {
    http: Option<String>,
    tcp: Option<u16>,
    exec: Option<Vec<String>>,
    port: Option<u16>,
    period: Option<String>,
    timeout: Option<String>,
    initial_delay: Option<String>,
    success_threshold: Option<u32>,
    failure_threshold: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentToml {
    kind: String,
    #[serde(default)]
    replicas: Option<u32>,
    progress_deadline: Option<String>,
    revision_history_limit: Option<u32>,
    #[serde(default)]
    variables: BTreeMap<String, Spanned<String>>,
    strategy: Option<StrategyToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
struct StrategyToml {
    rolling: Option<RollingToml>,
    blue_green: Option<BlueGreenToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollingToml {
    max_surge: Option<toml::Value>,
    max_unavailable: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlueGreenToml {
    auto_promote: Option<bool>,
    scale_down_delay: Option<String>,
}

/// A loaded, validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The application's name.
    pub application: String,
    services: BTreeMap<String, ServiceSpec>,
    environments: BTreeMap<String, EnvironmentSpec>,
    /// Effective variables per environment, each with where it came from.
    variables: BTreeMap<String, BTreeMap<String, (String, Origin)>>,
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

    fn line(&self, span: &Range<usize>) -> usize {
        position(self.text, span.start).0
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

fn quantity(at: &Located<'_>, span: Range<usize>, path: &str, v: &toml::Value) -> Result<Quantity> {
    match v {
        toml::Value::Integer(n) if *n >= 0 => Ok(Quantity::Count(*n as u32)),
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
            format!("expected a count or a percentage like \"25%\", found {other:?}"),
        )),
    }
}

impl Config {
    /// Parse and validate `text`, reporting errors against `file`.
    pub fn from_toml_str(file: &str, text: &str) -> Result<Self> {
        let at = Located { file, text };
        let deserializer = toml::Deserializer::parse(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            at.error(span, "", e.message())
        })?;
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
            let inner = e.into_inner();
            let span = inner.span().unwrap_or(0..0);
            at.error(span, if path == "." { "" } else { &path }, inner.message())
        })?;
        let mut services = BTreeMap::new();
        for (name, spanned) in &parsed.services {
            let span = spanned.span();
            let path = format!("services.{name}");
            let s = spanned.get_ref();
            let mut health = HealthChecks::default();
            for (kind, probe) in [
                ("readiness", &s.health.readiness),
                ("liveness", &s.health.liveness),
                ("startup", &s.health.startup),
            ] {
                if let Some(p) = probe {
                    let probe =
                        Self::probe(&at, span.clone(), &format!("{path}.health.{kind}"), p)?;
                    match kind {
                        "readiness" => health.readiness = Some(probe),
                        "liveness" => health.liveness = Some(probe),
                        _ => health.startup = Some(probe),
                    }
                }
            }
            let mut spec = ServiceSpec::builder()
                .name(name.as_str())
                .command(s.command.clone())
                .variables(s.variables.clone())
                .health(health)
                .build()
                .map_err(|e| at.error(span.clone(), &path, e))?;
            spec.port = s.port;
            spec.validate()
                .map_err(|e| at.error(span.clone(), &path, e))?;
            services.insert(name.clone(), spec);
        }
        let mut environments = BTreeMap::new();
        let mut variables = BTreeMap::new();
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
            if let Some(d) = &e.progress_deadline {
                spec.progress_deadline =
                    duration(&at, span.clone(), &format!("{path}.progress_deadline"), d)?;
            }
            if let Some(n) = e.revision_history_limit {
                spec.revision_history_limit = n;
            }
            if let Some(st) = &e.strategy {
                spec.strategy = match (&st.rolling, &st.blue_green) {
                    (Some(r), None) => {
                        let mut rolling = RollingSpec::default();
                        if let Some(v) = &r.max_surge {
                            rolling.max_surge = quantity(
                                &at,
                                span.clone(),
                                &format!("{path}.strategy.rolling.max_surge"),
                                v,
                            )?;
                        }
                        if let Some(v) = &r.max_unavailable {
                            rolling.max_unavailable = quantity(
                                &at,
                                span.clone(),
                                &format!("{path}.strategy.rolling.max_unavailable"),
                                v,
                            )?;
                        }
                        StrategySpec::Rolling(rolling)
                    }
                    (None, Some(b)) => {
                        let mut bg = BlueGreenSpec::default();
                        if let Some(a) = b.auto_promote {
                            bg.auto_promote = a;
                        }
                        if let Some(d) = &b.scale_down_delay {
                            bg.scale_down_delay = duration(
                                &at,
                                span.clone(),
                                &format!("{path}.strategy.blue_green.scale_down_delay"),
                                d,
                            )?;
                        }
                        StrategySpec::BlueGreen(bg)
                    }
                    _ => {
                        return Err(at.error(
                            span.clone(),
                            &format!("{path}.strategy"),
                            "expected exactly one of `rolling` or `blue_green`",
                        ));
                    }
                };
            }
            spec.validate()
                .map_err(|err| at.error(span.clone(), &path, err))?;
            // Layered variables: common, then the environment's, then overrides.
            let mut effective: BTreeMap<String, (String, Origin)> = BTreeMap::new();
            let layers = [
                ("variables".to_string(), &parsed.variables),
                (format!("{path}.variables"), &e.variables),
            ];
            for (layer, vars) in layers {
                for (k, v) in vars {
                    let origin = Origin {
                        layer: layer.clone(),
                        file: file.to_string(),
                        line: at.line(&v.span()),
                    };
                    effective.insert(k.clone(), (v.get_ref().clone(), origin));
                }
            }
            if let Some(o) = parsed.overrides.get(name) {
                for (k, v) in o {
                    let origin = Origin {
                        layer: format!("overrides.{name}"),
                        file: file.to_string(),
                        line: at.line(&v.span()),
                    };
                    effective.insert(k.clone(), (v.get_ref().clone(), origin));
                }
            }
            spec.variables = effective
                .iter()
                .map(|(k, (v, _))| (k.clone(), v.clone()))
                .collect();
            spec.validate()
                .map_err(|err| at.error(span.clone(), &path, err))?;
            variables.insert(name.clone(), effective);
            environments.insert(name.clone(), spec);
        }
        for name in parsed.overrides.keys() {
            if !environments.contains_key(name) {
                return Err(Error::invalid(
                    format!("{file}: overrides.{name}"),
                    "overrides an environment that is not defined",
                ));
            }
        }
        Ok(Config {
            application: parsed.application,
            services,
            environments,
            variables,
        })
    }

    fn probe(at: &Located<'_>, span: Range<usize>, path: &str, p: &ProbeToml) -> Result<Probe> {
        let action = match (&p.http, p.tcp, &p.exec) {
            (Some(path_), None, None) => ProbeAction::Http {
                path: path_.clone(),
                port: p.port,
                headers: BTreeMap::new(),
            },
            (None, Some(port), None) => ProbeAction::Tcp { port: Some(port) },
            (None, None, Some(argv)) => ProbeAction::Command { argv: argv.clone() },
            _ => {
                return Err(at.error(
                    span,
                    path,
                    "expected exactly one of `http`, `tcp` or `exec`",
                ));
            }
        };
        let mut probe = Probe::builder()
            .action(action)
            .build()
            .map_err(|e| at.error(span.clone(), path, e))?;
        if let Some(d) = &p.period {
            probe.period = duration(at, span.clone(), &format!("{path}.period"), d)?;
        }
        if let Some(d) = &p.timeout {
            probe.timeout = duration(at, span.clone(), &format!("{path}.timeout"), d)?;
        }
        if let Some(d) = &p.initial_delay {
            probe.initial_delay = duration(at, span.clone(), &format!("{path}.initial_delay"), d)?;
        }
        if let Some(n) = p.success_threshold {
            probe.success_threshold = n;
        }
        if let Some(n) = p.failure_threshold {
            probe.failure_threshold = n;
        }
        probe.validate(path).map_err(|e| at.error(span, path, e))?;
        Ok(probe)
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

    /// Every service, by name.
    pub fn services(&self) -> impl Iterator<Item = &ServiceSpec> {
        self.services.values()
    }

    /// Every environment, by name.
    pub fn environments(&self) -> impl Iterator<Item = &EnvironmentSpec> {
        self.environments.values()
    }

    /// The effective value of `variable` in `environment` and where it came from.
    pub fn explain(&self, environment: &str, variable: &str) -> Option<(&str, &Origin)> {
        self.variables
            .get(environment)?
            .get(variable)
            .map(|(v, o)| (v.as_str(), o))
    }
}
