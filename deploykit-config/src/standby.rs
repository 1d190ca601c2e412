//! `[environments.<name>.standby]`: the environment that takes over when this one is lost,
//! when that counts as lost, the database that follows it through the archive, and the
//! commands that do what deploykit cannot do itself on this platform, as
//! [`StandbySettings`].
//!
//! ```toml
//! [environments.production.standby]
//! environment = "production-dr"    # a defined environment, kept in step
//! max_lag = "5s"                   # refuse a failover losing more (unless forced)
//! step_timeout = "60s"             # escalate a step that takes longer
//! automatic = true                 # `failover watch` fails over when the assessment says lost
//! warm = 1                         # keep the standby's services in step, 1 instance each
//! alert_webhook = "https://alerts.example.com/hook"   # FailoverStalled, besides stderr
//!
//! [environments.production.standby.assessment]
//! quorum = 2                       # probes that must fail…
//! grace = "10s"                    # …each for this long without a success
//! interval = "1s"
//! probes = [
//!   { name = "http", url = "http://127.0.0.1:8080/healthz" },
//!   { name = "postgres", command = ["pg_isready", "-h", "127.0.0.1", "-p", "5432"] },
//! ]
//!
//! [environments.production.standby.database]    # PostgreSQL following the archive
//! repository = "/backups/pg"                      # the primary archives into it
//! primary_pgdata = "/srv/pg/main"                 # fenced (standby.signal, stopped)
//! standby_connection = "host=127.0.0.1 port=5433 user=postgres"   # promoted
//!
//! [environments.production.standby.hooks]       # argv, each idempotent
//! switch_traffic = ["sh", "-c", "ln -sfn dr /etc/lb/active && lbctl reload"]
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use deploykit_core::{EnvironmentSpec, Result};
use serde::Deserialize;
use toml::Spanned;

use super::{Located, duration};

/// `[environments.<name>.standby]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StandbyToml {
    environment: Spanned<String>,
    max_lag: Option<Spanned<String>>,
    step_timeout: Option<Spanned<String>>,
    #[serde(default)]
    automatic: bool,
    warm: Option<Spanned<u32>>,
    alert_webhook: Option<Spanned<String>>,
    assessment: Option<AssessmentToml>,
    database: Option<DatabaseToml>,
    #[serde(default)]
    hooks: BTreeMap<String, Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssessmentToml {
    quorum: Option<Spanned<usize>>,
    grace: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    #[serde(default)]
    probes: Vec<Spanned<ProbeToml>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeToml {
    name: String,
    url: Option<String>,
    command: Option<Vec<String>>,
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DatabaseToml {
    repository: Spanned<String>,
    primary_pgdata: Option<Spanned<String>>,
    standby_connection: Spanned<String>,
}

/// The steps a hook may do (see `deploykit_core::failover::Step`).
pub const HOOK_STEPS: [&str; 5] = [
    "fence",
    "promote_database",
    "scale",
    "switch_traffic",
    "verify",
];

/// An environment's standby and how it takes over.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StandbySettings {
    /// The standby environment.
    pub environment: String,
    /// The most the standby may be behind for an unforced failover (default 5 s).
    pub max_lag: Duration,
    /// A step taking longer is escalated (default 60 s).
    pub step_timeout: Duration,
    /// Whether `failover watch` fails over by itself when the assessment says the primary is
    /// lost.
    pub automatic: bool,
    /// When set, deploykit keeps the standby's services in step on its own local daemon
    /// (`environments.<standby>.local_state`): the revisions the primary serves, re-made with
    /// the standby's settings, at this many instances each (0: cold, none running) while it
    /// waits; a failover scales them to the standby's `replicas` and points the primary's
    /// proxy at the standby's. Unset, the services are the hooks' business.
    pub warm: Option<u32>,
    /// Where `failover watch` POSTs its alerts (Alertmanager-style JSON), besides stderr:
    /// `FailoverStalled` when a failover from this environment stands still for its
    /// `step_timeout` (a step that keeps failing, or a process that died).
    pub alert_webhook: Option<String>,
    /// When the primary counts as lost.
    pub assessment: AssessmentSettings,
    /// The database that follows the primary through the archive, if any.
    pub database: Option<StandbyDatabase>,
    /// Commands for steps, by step name ([`HOOK_STEPS`]); run after deploykit's own part of
    /// the step.
    pub hooks: BTreeMap<String, Vec<String>>,
}

/// When the primary counts as lost.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AssessmentSettings {
    /// How many probes must fail (default 2, or 1 with a single probe).
    pub quorum: usize,
    /// How long each must fail without a success (default 10 s).
    pub grace: Duration,
    /// How often the probes run (default 1 s).
    pub interval: Duration,
    /// The probes.
    pub probes: Vec<ProbeSettings>,
}

/// One probe of the primary.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProbeSettings {
    /// Its name, unique in the environment.
    pub name: String,
    /// What it checks.
    pub check: ProbeCheck,
    /// How long it may take (default 1 s).
    pub timeout: Duration,
}

/// What a probe checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeCheck {
    /// An HTTP GET that must answer 2xx.
    Http(String),
    /// A command that must exit 0.
    Command(Vec<String>),
}

/// A PostgreSQL standby following the primary through the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StandbyDatabase {
    /// The repository the primary archives into (relative to the configuration file).
    pub repository: PathBuf,
    /// The primary's data directory, on this machine: fenced on failover.
    pub primary_pgdata: Option<PathBuf>,
    /// How to reach the standby (libpq connection string): promoted on failover.
    pub standby_connection: String,
}

pub(crate) fn load(
    at: &Located<'_>,
    path: &str,
    name: &str,
    t: &StandbyToml,
    environments: &BTreeMap<String, EnvironmentSpec>,
    defined: &BTreeSet<String>,
    local_states: &BTreeMap<String, PathBuf>,
) -> Result<StandbySettings> {
    let base = Path::new(at.file).parent().unwrap_or(Path::new(""));
    let standby = t.environment.get_ref();
    if standby == name {
        return Err(at.error(
            t.environment.span(),
            &format!("{path}.environment"),
            "an environment cannot be its own standby",
        ));
    }
    if !defined.contains(standby) && !environments.contains_key(standby) {
        return Err(at.error(
            t.environment.span(),
            &format!("{path}.environment"),
            format!("{standby:?} is not a defined environment"),
        ));
    }
    let positive = |value: &Option<Spanned<String>>, field: &str, default: Duration| {
        let Some(value) = value else {
            return Ok(default);
        };
        let field = format!("{path}.{field}");
        let d = duration(at, value.span(), &field, value.get_ref())?;
        if d.is_zero() {
            return Err(at.error(value.span(), &field, "must be longer than zero"));
        }
        Ok(d)
    };
    let max_lag = match &t.max_lag {
        Some(v) => duration(at, v.span(), &format!("{path}.max_lag"), v.get_ref())?,
        None => Duration::from_secs(5),
    };
    let step_timeout = positive(&t.step_timeout, "step_timeout", Duration::from_secs(60))?;
    let assessment = match &t.assessment {
        Some(a) => assessment(at, &format!("{path}.assessment"), a)?,
        None => AssessmentSettings {
            quorum: 1,
            grace: Duration::from_secs(10),
            interval: Duration::from_secs(1),
            probes: Vec::new(),
        },
    };
    if t.automatic && assessment.probes.is_empty() {
        return Err(at.error(
            t.environment.span(),
            &format!("{path}.assessment.probes"),
            "`automatic = true` needs probes of the primary to judge it lost",
        ));
    }
    let database = t.database.as_ref().map(|d| {
        if d.standby_connection.get_ref().trim().is_empty() {
            return Err(at.error(
                d.standby_connection.span(),
                &format!("{path}.database.standby_connection"),
                "must not be empty: how to reach the standby (\"host=… port=… user=…\")",
            ));
        }
        Ok(StandbyDatabase {
            repository: super::backup::resolve(base, d.repository.get_ref()),
            primary_pgdata: d
                .primary_pgdata
                .as_ref()
                .map(|p| super::backup::resolve(base, p.get_ref())),
            standby_connection: d.standby_connection.get_ref().clone(),
        })
    });
    let mut hooks = BTreeMap::new();
    for (step, argv) in &t.hooks {
        let field = format!("{path}.hooks.{step}");
        if !HOOK_STEPS.contains(&step.as_str()) {
            return Err(at.error(
                argv.span(),
                &field,
                format!("{step:?} is not a step (one of {})", HOOK_STEPS.join(", ")),
            ));
        }
        if argv.get_ref().first().is_none_or(|p| p.trim().is_empty()) {
            return Err(at.error(
                argv.span(),
                &field,
                "needs a program to run: [\"program\", \"arg\", …]",
            ));
        }
        hooks.insert(step.clone(), argv.get_ref().clone());
    }
    if let Some(warm) = &t.warm {
        let field = format!("{path}.warm");
        let from = local_states.get(name);
        let to = local_states.get(standby);
        if to.is_none() || from == to {
            return Err(at.error(
                warm.span(),
                &field,
                format!(
                    "the standby needs a local daemon of its own to keep in step: set \
                     environments.{standby}.local_state to its state directory (different from \
                     {name}'s)"
                ),
            ));
        }
        let replicas = environments.get(standby).map_or(1, |e| e.replicas);
        if *warm.get_ref() > replicas {
            return Err(at.error(
                warm.span(),
                &field,
                format!(
                    "{} warm instances is more than the {replicas} replicas {standby} runs when it \
                     takes over",
                    warm.get_ref()
                ),
            ));
        }
    }
    Ok(StandbySettings {
        environment: standby.clone(),
        max_lag,
        step_timeout,
        automatic: t.automatic,
        warm: t.warm.as_ref().map(|w| *w.get_ref()),
        alert_webhook: t
            .alert_webhook
            .as_ref()
            .map(|url| super::http_url(at, url, &format!("{path}.alert_webhook")))
            .transpose()?,
        assessment,
        database: database.transpose()?,
        hooks,
    })
}

fn assessment(at: &Located<'_>, path: &str, a: &AssessmentToml) -> Result<AssessmentSettings> {
    let mut probes = Vec::new();
    let mut names = BTreeSet::new();
    for (i, spanned) in a.probes.iter().enumerate() {
        let p = spanned.get_ref();
        let field = format!("{path}.probes[{i}]");
        if p.name.trim().is_empty() || !names.insert(p.name.clone()) {
            return Err(at.error(
                spanned.span(),
                &format!("{field}.name"),
                format!("{:?}: every probe needs a name of its own", p.name),
            ));
        }
        let check = match (&p.url, &p.command) {
            (Some(url), None) if url.starts_with("http://") => ProbeCheck::Http(url.clone()),
            (Some(url), None) => {
                return Err(at.error(
                    spanned.span(),
                    &format!("{field}.url"),
                    format!("{url:?} is not an http:// URL"),
                ));
            }
            (None, Some(argv)) if argv.first().is_some_and(|p| !p.trim().is_empty()) => {
                ProbeCheck::Command(argv.clone())
            }
            (None, Some(_)) => {
                return Err(at.error(
                    spanned.span(),
                    &format!("{field}.command"),
                    "needs a program to run: [\"program\", \"arg\", …]",
                ));
            }
            _ => {
                return Err(at.error(
                    spanned.span(),
                    &field,
                    "needs exactly one of `url` (an HTTP GET answering 2xx) or `command` (exit 0)",
                ));
            }
        };
        let timeout = match &p.timeout {
            Some(t) => duration(at, spanned.span(), &format!("{field}.timeout"), t)?,
            None => Duration::from_secs(1),
        };
        probes.push(ProbeSettings {
            name: p.name.clone(),
            check,
            timeout,
        });
    }
    let grace = match &a.grace {
        Some(g) => duration(at, g.span(), &format!("{path}.grace"), g.get_ref())?,
        None => Duration::from_secs(10),
    };
    let interval = match &a.interval {
        Some(v) => {
            let d = duration(at, v.span(), &format!("{path}.interval"), v.get_ref())?;
            if d.is_zero() {
                return Err(at.error(
                    v.span(),
                    &format!("{path}.interval"),
                    "must be longer than zero",
                ));
            }
            d
        }
        None => Duration::from_secs(1),
    };
    let quorum = match &a.quorum {
        Some(q) => {
            let n = *q.get_ref();
            if n == 0 || n > probes.len().max(1) {
                return Err(at.error(
                    q.span(),
                    &format!("{path}.quorum"),
                    format!(
                        "{n} probes must fail and {} are configured: the quorum is 1 to the number \
                         of probes",
                        probes.len()
                    ),
                ));
            }
            n
        }
        None => probes.len().clamp(1, 2),
    };
    Ok(AssessmentSettings {
        quorum,
        grace,
        interval,
        probes,
    })
}
