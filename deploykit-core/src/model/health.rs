//! Health checks: readiness, liveness, startup and custom checks, each an HTTP, TCP, command or
//! custom probe with Kubernetes' timing knobs.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use typed_builder::TypedBuilder;

use crate::error::{Error, Result};
use crate::time::{HOUR, duration_ms};
use crate::validate::check_duration;

/// The largest success or failure threshold a probe accepts.
const MAX_THRESHOLD: u32 = 1_000;

/// What a probe does to decide whether an instance is healthy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProbeAction {
    /// An HTTP GET. Kubernetes counts 200–399 as healthy; deploykit's local backend counts
    /// only 2xx, since a redirect from a health path is nearly always a misconfiguration (an
    /// HTTPS or login redirect) that would otherwise pass unnoticed.
    Http {
        /// Request path, starting with `/`.
        path: String,
        /// Port on the instance; `None` means the service's port.
        port: Option<u16>,
        /// Extra request headers.
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
    /// A TCP connect; healthy when the connection is accepted.
    Tcp {
        /// Port on the instance; `None` means the service's port.
        port: Option<u16>,
    },
    /// A command run beside the instance; healthy when it exits 0.
    Command {
        /// Program and arguments.
        argv: Vec<String>,
    },
    /// A check the environment registers under a name (a Rust function in an embedded
    /// environment, for example); healthy when it says so.
    Custom {
        /// The registered name.
        name: String,
    },
}

impl ProbeAction {
    /// An HTTP GET probe of `path` on the service's port.
    pub fn http(path: impl Into<String>) -> Self {
        ProbeAction::Http {
            path: path.into(),
            port: None,
            headers: BTreeMap::new(),
        }
    }

    fn validate(&self, field: &str) -> Result<()> {
        match self {
            ProbeAction::Http { path, port, .. } => {
                if !path.starts_with('/') {
                    return Err(Error::invalid(
                        format!("{field}.path"),
                        format!("{path:?} must start with '/'"),
                    ));
                }
                check_port(field, *port)
            }
            ProbeAction::Tcp { port } => check_port(field, *port),
            ProbeAction::Command { argv } => {
                if argv.first().is_none_or(|p| p.is_empty()) {
                    return Err(Error::invalid(
                        format!("{field}.argv"),
                        "a command probe needs a program to run",
                    ));
                }
                Ok(())
            }
            ProbeAction::Custom { name } => {
                if name.trim().is_empty() {
                    return Err(Error::invalid(
                        format!("{field}.name"),
                        "a custom probe needs the name it is registered under",
                    ));
                }
                Ok(())
            }
        }
    }
}

impl std::fmt::Display for ProbeAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeAction::Http { path, .. } => write!(f, "GET {path}"),
            ProbeAction::Tcp { port } => match port {
                Some(p) => write!(f, "TCP connect :{p}"),
                None => write!(f, "TCP connect"),
            },
            ProbeAction::Command { argv } => write!(f, "exec {}", argv.join(" ")),
            ProbeAction::Custom { name } => write!(f, "custom check {name}"),
        }
    }
}

fn check_port(field: &str, port: Option<u16>) -> Result<()> {
    if port == Some(0) {
        return Err(Error::invalid(
            format!("{field}.port"),
            "port 0 is not a port",
        ));
    }
    Ok(())
}

/// One probe with its timing, as Kubernetes defines it.
///
/// ```
/// use std::time::Duration;
/// use deploykit_core::{Probe, ProbeAction};
/// let probe = Probe::builder()
///     .action(ProbeAction::http("/health"))
///     .period(Duration::from_secs(5))
///     .build()?;
/// assert_eq!(probe.failure_threshold, 3);
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[serde(remote = "Self")]
#[builder(build_method(into = Result<Probe>))]
#[non_exhaustive]
pub struct Probe {
    /// What the probe does.
    pub action: ProbeAction,
    /// Delay after the instance starts before the first probe (default 0).
    #[builder(default)]
    #[serde(with = "duration_ms", rename = "initial_delay_ms")]
    pub initial_delay: Duration,
    /// Time between probes (default 10 s).
    #[builder(default = Duration::from_secs(10))]
    #[serde(with = "duration_ms", rename = "period_ms")]
    pub period: Duration,
    /// How long one probe may take (default 1 s).
    #[builder(default = Duration::from_secs(1))]
    #[serde(with = "duration_ms", rename = "timeout_ms")]
    pub timeout: Duration,
    /// Consecutive successes needed to count as healthy (default 1).
    #[builder(default = 1)]
    pub success_threshold: u32,
    /// Consecutive failures needed to count as unhealthy (default 3).
    #[builder(default = 3)]
    pub failure_threshold: u32,
}

crate::validate::validated_serde!(Probe, |p| p.validate("probe"));

impl From<Probe> for Result<Probe> {
    fn from(p: Probe) -> Self {
        p.validate("probe")?;
        Ok(p)
    }
}

impl Probe {
    /// How long after start an instance that always fails this probe is declared unhealthy.
    pub fn time_to_failure(&self) -> Duration {
        self.initial_delay + self.period * self.failure_threshold
    }

    /// Check the probe as its builder does; errors name `field` and the part of the probe.
    pub fn validate(&self, field: &str) -> Result<()> {
        self.action.validate(&format!("{field}.action"))?;
        let ms = Duration::from_millis(1);
        check_duration(
            &format!("{field}.initial_delay"),
            self.initial_delay,
            Duration::ZERO,
            HOUR,
        )?;
        check_duration(&format!("{field}.period"), self.period, ms, HOUR)?;
        check_duration(&format!("{field}.timeout"), self.timeout, ms, HOUR)?;
        if self.timeout > self.period {
            return Err(Error::invalid(
                format!("{field}.timeout"),
                format!(
                    "{:?} is longer than the period {:?}: probes would overlap",
                    self.timeout, self.period
                ),
            ));
        }
        if self.success_threshold == 0 {
            return Err(Error::invalid(
                format!("{field}.success_threshold"),
                "must be at least 1",
            ));
        }
        if self.failure_threshold == 0 {
            return Err(Error::invalid(
                format!("{field}.failure_threshold"),
                "must be at least 1",
            ));
        }
        for (name, n) in [
            ("success_threshold", self.success_threshold),
            ("failure_threshold", self.failure_threshold),
        ] {
            if n > MAX_THRESHOLD {
                return Err(Error::invalid(
                    format!("{field}.{name}"),
                    format!("{n} is above {MAX_THRESHOLD}"),
                ));
            }
        }
        Ok(())
    }
}

/// The health checks of a service: all optional.
///
/// - **readiness** gates traffic and rollouts: an instance receives requests, and counts as
///   available, only while it passes.
/// - **liveness** restarts an instance that stops passing.
/// - **startup** holds liveness and readiness off until the instance has started; failing it
///   repeatedly fails the instance.
/// - **custom** checks gate readiness too; each has a name that appears in failure reasons.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct HealthChecks {
    /// Readiness probe.
    #[builder(default, setter(strip_option))]
    pub readiness: Option<Probe>,
    /// Liveness probe.
    #[builder(default, setter(strip_option))]
    pub liveness: Option<Probe>,
    /// Startup probe.
    #[builder(default, setter(strip_option))]
    pub startup: Option<Probe>,
    /// Named custom checks that also gate readiness.
    #[builder(default)]
    pub custom: BTreeMap<String, Probe>,
}

impl HealthChecks {
    /// Whether any check gates readiness (readiness, startup or custom).
    pub fn gates_readiness(&self) -> bool {
        self.readiness.is_some() || self.startup.is_some() || !self.custom.is_empty()
    }

    pub(crate) fn validate(&self, field: &str) -> Result<()> {
        if let Some(p) = &self.readiness {
            p.validate(&format!("{field}.readiness"))?;
        }
        for (name, p) in [("liveness", &self.liveness), ("startup", &self.startup)] {
            if let Some(p) = p {
                p.validate(&format!("{field}.{name}"))?;
                if p.success_threshold != 1 {
                    return Err(Error::invalid(
                        format!("{field}.{name}.success_threshold"),
                        format!("must be 1 for a {name} probe, got {}", p.success_threshold),
                    ));
                }
            }
        }
        for (name, p) in &self.custom {
            if name.trim().is_empty() {
                return Err(Error::invalid(
                    format!("{field}.custom"),
                    "custom checks need a non-empty name",
                ));
            }
            p.validate(&format!("{field}.custom.{name}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(r: Result<Probe>) -> String {
        match r {
            Err(Error::InvalidSpec { field, .. }) => field,
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
    }

    #[test]
    fn probe_defaults_follow_kubernetes() {
        let p = Probe::builder()
            .action(ProbeAction::http("/up"))
            .build()
            .unwrap();
        assert_eq!(p.period, Duration::from_secs(10));
        assert_eq!(p.timeout, Duration::from_secs(1));
        assert_eq!((p.success_threshold, p.failure_threshold), (1, 3));
        assert_eq!(p.time_to_failure(), Duration::from_secs(30));
    }

    #[test]
    fn bad_probes_name_their_field() {
        let http = || ProbeAction::http("/up");
        let r = Probe::builder().action(ProbeAction::http("up")).build();
        assert_eq!(field_of(r), "probe.action.path");
        let r = Probe::builder()
            .action(http())
            .period(Duration::ZERO)
            .build();
        assert_eq!(field_of(r), "probe.period");
        let r = Probe::builder()
            .action(http())
            .timeout(Duration::from_secs(20))
            .build();
        assert_eq!(field_of(r), "probe.timeout");
        let r = Probe::builder().action(http()).failure_threshold(0).build();
        assert_eq!(field_of(r), "probe.failure_threshold");
        let r = Probe::builder().action(http()).success_threshold(0).build();
        assert_eq!(field_of(r), "probe.success_threshold");
        let r = Probe::builder()
            .action(ProbeAction::Tcp { port: Some(0) })
            .build();
        assert_eq!(field_of(r), "probe.action.port");
        let r = Probe::builder()
            .action(ProbeAction::Command { argv: vec![] })
            .build();
        assert_eq!(field_of(r), "probe.action.argv");
    }

    #[test]
    fn liveness_needs_success_threshold_one() {
        let p = Probe {
            success_threshold: 2,
            ..Probe::builder()
                .action(ProbeAction::http("/up"))
                .build()
                .unwrap()
        };
        let checks = HealthChecks::builder().liveness(p).build();
        let err = checks.validate("health").unwrap_err();
        assert!(
            err.to_string()
                .contains("health.liveness.success_threshold"),
            "{err}"
        );
    }
}
