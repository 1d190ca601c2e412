//! `health.readiness`, `health.liveness` and `health.startup` of a service or environment:
//! probes with Kubernetes' timing knobs.
//!
//! A timeout the file does not give follows a short period down — the default timeout (1 s)
//! would otherwise outlast `period = "500ms"` and make a file invalid over a value nobody
//! wrote. A timeout the file gives must fit in the period (written or default).

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::{Located, duration};
use deploykit_core::model::{HealthChecks, Probe, ProbeAction};
use deploykit_core::{Error, Result};

/// `health = { readiness = …, liveness = …, startup = … }`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthToml {
    readiness: Option<Spanned<ProbeToml>>,
    liveness: Option<Spanned<ProbeToml>>,
    startup: Option<Spanned<ProbeToml>>,
}

/// One probe: exactly one of `http`, `tcp` or `exec`, and its timing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeToml {
    http: Option<String>,
    /// Request headers of an HTTP probe, e.g. `{ Host = "shop.example.com" }`.
    headers: Option<BTreeMap<String, String>>,
    tcp: Option<Spanned<u16>>,
    exec: Option<Spanned<Vec<String>>>,
    port: Option<Spanned<u16>>,
    period: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    initial_delay: Option<Spanned<String>>,
    success_threshold: Option<u32>,
    failure_threshold: Option<u32>,
}

impl ProbeToml {
    /// Where the key `key` is written, if it is.
    fn span_of(&self, key: &str) -> Option<Range<usize>> {
        match key {
            "tcp" => self.tcp.as_ref().map(Spanned::span),
            "exec" => self.exec.as_ref().map(Spanned::span),
            "port" => self.port.as_ref().map(Spanned::span),
            "period" => self.period.as_ref().map(Spanned::span),
            "timeout" => self.timeout.as_ref().map(Spanned::span),
            "initial_delay" => self.initial_delay.as_ref().map(Spanned::span),
            _ => None,
        }
    }

    /// The key of this table that holds what the core calls `field` (a probe's `action.path`
    /// is the `http` key, `action.argv` the `exec` key, and so on).
    fn key_of<'a>(&self, field: &'a str) -> &'a str {
        match field {
            "action.path" => "http",
            "action.argv" => "exec",
            "action.port" if self.tcp.is_some() => "tcp",
            "action.port" => "port",
            other => other,
        }
    }
}

/// The health checks of `h`, at `path` (`services.web.health`).
pub(crate) fn checks(at: &Located<'_>, path: &str, h: &HealthToml) -> Result<HealthChecks> {
    let mut health = HealthChecks::default();
    if let Some(p) = &h.readiness {
        health.readiness = Some(probe(at, &format!("{path}.readiness"), p)?);
    }
    if let Some(p) = &h.liveness {
        health.liveness = Some(probe(at, &format!("{path}.liveness"), p)?);
    }
    if let Some(p) = &h.startup {
        health.startup = Some(probe(at, &format!("{path}.startup"), p)?);
    }
    Ok(health)
}

fn probe(at: &Located<'_>, path: &str, spanned: &Spanned<ProbeToml>) -> Result<Probe> {
    let span = spanned.span();
    let p = spanned.get_ref();
    if p.headers.is_some() && p.http.is_none() {
        return Err(at.error(span, path, "`headers` only applies to an `http` probe"));
    }
    let action = match (&p.http, &p.tcp, &p.exec) {
        (Some(path_), None, None) => ProbeAction::Http {
            path: path_.clone(),
            port: p.port.as_ref().map(|port| *port.get_ref()),
            headers: p.headers.clone().unwrap_or_default(),
        },
        (None, Some(port), None) => ProbeAction::Tcp {
            port: Some(*port.get_ref()),
        },
        (None, None, Some(argv)) => ProbeAction::Command {
            argv: argv.get_ref().clone(),
        },
        _ => {
            return Err(at.error(
                span,
                path,
                "expected exactly one of `http`, `tcp` or `exec`",
            ));
        }
    };
    let refused = |prefix: &str, e: Error| refused(at, &span, path, p, prefix, e);
    let mut probe = Probe::builder()
        .action(action)
        .build()
        .map_err(|e| refused("probe", e))?;
    let default_timeout = probe.timeout;
    if let Some(d) = &p.period {
        probe.period = duration(at, d.span(), &format!("{path}.period"), d.get_ref())?;
    }
    if let Some(d) = &p.initial_delay {
        probe.initial_delay =
            duration(at, d.span(), &format!("{path}.initial_delay"), d.get_ref())?;
    }
    probe.timeout = match &p.timeout {
        Some(t) => {
            let field = format!("{path}.timeout");
            let timeout = duration(at, t.span(), &field, t.get_ref())?;
            if timeout > probe.period {
                let period = match &p.period {
                    Some(period) => format!("the period {:?}", period.get_ref()),
                    None => format!(
                        "the default period \"{}\"",
                        humantime::format_duration(probe.period)
                    ),
                };
                return Err(at.error(
                    t.span(),
                    &field,
                    format!(
                        "{:?} is longer than {period}: a probe must finish before the next \
                         one starts; shorten the timeout or lengthen the period",
                        t.get_ref()
                    ),
                ));
            }
            timeout
        }
        None => default_timeout.min(probe.period),
    };
    if let Some(n) = p.success_threshold {
        probe.success_threshold = n;
    }
    if let Some(n) = p.failure_threshold {
        probe.failure_threshold = n;
    }
    probe.validate(path).map_err(|e| refused(path, e))?;
    Ok(probe)
}

/// `e`, an error of the core's probe checks naming `<prefix>.<field>`, at the key of the
/// probe table (`path`) that holds the field.
fn refused(
    at: &Located<'_>,
    span: &Range<usize>,
    path: &str,
    p: &ProbeToml,
    prefix: &str,
    e: Error,
) -> Error {
    let Error::InvalidSpec { field, reason } = e else {
        return e;
    };
    match field
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('.'))
    {
        Some(rest) => {
            let key = p.key_of(rest);
            let span = p.span_of(key).unwrap_or_else(|| span.clone());
            at.error(span, &format!("{path}.{key}"), reason)
        }
        None => at.error(span.clone(), path, format!("invalid {field}: {reason}")),
    }
}
