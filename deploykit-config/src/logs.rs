//! `[environments.<name>.logs]`: how an environment's instance logs are rotated, how long they
//! stay, where they are archived, and the pipeline and forwarders they are shipped through, as
//! [`LogSettings`].
//!
//! ```toml
//! [environments.production.logs]
//! max_file_bytes = 10485760        # rotate at this size (default 10 MiB)
//! keep_files = 5                   # rotated files kept (default 3)
//! rotate_after = "1d"              # also rotate a file written to for this long
//! retain_for = "7d"                # files older than this leave the hot store…
//! archive = "s3://acme-logs/prod"  # …into this repository first (a directory or s3://)
//! password_env = "DEPLOYKIT_LOGS_PASSWORD"
//!
//! [environments.production.logs.pipeline]   # deploykit_logs::PipelineConfig
//! stages = [{ type = "parse_json" }, { type = "redact", builtin = ["bearer"] }]
//!
//! [[environments.production.logs.forward]]
//! type = "otlp"
//! endpoint = "http://127.0.0.1:4318"
//! headers = { authorization_env = "OTLP_TOKEN" }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use deploykit_core::Result;
use deploykit_logs::PipelineConfig;
use serde::Deserialize;
use toml::Spanned;

use super::{Located, duration};

/// `[environments.<name>.logs]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogsToml {
    max_file_bytes: Option<Spanned<u64>>,
    keep_files: Option<u32>,
    rotate_after: Option<Spanned<String>>,
    retain_for: Option<Spanned<String>>,
    archive: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
    pipeline: Option<Spanned<toml::Value>>,
    #[serde(default)]
    forward: Vec<Spanned<ForwardToml>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "snake_case")]
enum ForwardToml {
    Otlp {
        endpoint: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
    Webhook {
        url: String,
        signing_key_env: Option<String>,
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
    File {
        dir: String,
        max_file_bytes: Option<u64>,
    },
}

/// How an environment's logs are kept and shipped.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct LogSettings {
    /// Rotate an instance's log file at this size (default 10 MiB).
    pub max_file_bytes: u64,
    /// Rotated files kept per instance (default 3).
    pub keep_files: u32,
    /// Also rotate a file written to for this long.
    pub rotate_after: Option<Duration>,
    /// Files older than this leave the hot store (archived first if there is an archive).
    pub retain_for: Option<Duration>,
    /// The repository files go to before they leave: a directory or `s3://bucket/prefix`.
    pub archive: Option<String>,
    /// The variable holding the archive repository's password.
    pub password_env: Option<String>,
    /// The pipeline records are shipped through, if any is configured.
    pub pipeline: Option<PipelineConfig>,
    /// Where shipped records go.
    pub forward: Vec<ForwardSettings>,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            max_file_bytes: 10 * 1024 * 1024,
            keep_files: 3,
            rotate_after: None,
            retain_for: None,
            archive: None,
            password_env: None,
            pipeline: None,
            forward: Vec::new(),
        }
    }
}

/// One destination of shipped records.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardSettings {
    /// OTLP/HTTP logs (`{endpoint}/v1/logs`).
    Otlp {
        /// `http://host:port` of the collector.
        endpoint: String,
        /// Extra headers; a name ending in `_env` takes its value from that variable (the
        /// header is the name without the suffix).
        headers: BTreeMap<String, String>,
    },
    /// A JSON array of records POSTed to a URL.
    Webhook {
        /// The URL.
        url: String,
        /// The variable holding the HMAC-SHA256 signing key, if requests are signed.
        signing_key_env: Option<String>,
        /// Extra headers, as for OTLP.
        headers: BTreeMap<String, String>,
    },
    /// JSON lines in a directory, rotated by size.
    File {
        /// The directory (relative to the configuration file).
        dir: PathBuf,
        /// Rotate at this size (default 64 MiB).
        max_file_bytes: u64,
    },
}

pub(crate) fn load(at: &Located<'_>, path: &str, t: &LogsToml) -> Result<LogSettings> {
    let base = Path::new(at.file).parent().unwrap_or(Path::new(""));
    let mut settings = LogSettings::default();
    if let Some(spanned) = &t.max_file_bytes {
        let bytes = *spanned.get_ref();
        if bytes < 4096 {
            return Err(at.error(
                spanned.span(),
                &format!("{path}.max_file_bytes"),
                format!("{bytes} is too small: at least 4096 (a file holds whole lines)"),
            ));
        }
        settings.max_file_bytes = bytes;
    }
    if let Some(keep) = t.keep_files {
        settings.keep_files = keep;
    }
    let positive = |value: &Spanned<String>, field: &str| -> Result<Duration> {
        let field = format!("{path}.{field}");
        let d = duration(at, value.span(), &field, value.get_ref())?;
        if d.is_zero() {
            return Err(at.error(value.span(), &field, "must be longer than zero"));
        }
        Ok(d)
    };
    if let Some(value) = &t.rotate_after {
        settings.rotate_after = Some(positive(value, "rotate_after")?);
    }
    if let Some(value) = &t.retain_for {
        settings.retain_for = Some(positive(value, "retain_for")?);
    }
    match (&t.archive, &t.password_env) {
        (Some(archive), Some(env)) => {
            if t.retain_for.is_none() {
                return Err(at.error(
                    archive.span(),
                    &format!("{path}.archive"),
                    "needs `retain_for`: files are archived when they leave the hot store",
                ));
            }
            let text = archive.get_ref();
            settings.archive = Some(if text.starts_with("s3://") {
                text.clone()
            } else {
                super::backup::resolve(base, text).display().to_string()
            });
            settings.password_env = Some(env.get_ref().clone());
        }
        (Some(archive), None) => {
            return Err(at.error(
                archive.span(),
                &format!("{path}.password_env"),
                "is required with `archive`: the variable that holds the archive's password",
            ));
        }
        (None, Some(env)) => {
            return Err(at.error(
                env.span(),
                &format!("{path}.archive"),
                "is required with `password_env`",
            ));
        }
        (None, None) => {}
    }
    if let Some(value) = &t.pipeline {
        let text = toml::to_string(value.get_ref())
            .map_err(|e| at.error(value.span(), &format!("{path}.pipeline"), e.to_string()))?;
        let pipeline = PipelineConfig::from_toml_str(&text).map_err(|e| match e {
            deploykit_core::Error::InvalidSpec { field, reason } => at.error(
                value.span(),
                &field.replacen(deploykit_logs::CONFIG_PATH, &format!("{path}.pipeline"), 1),
                reason,
            ),
            other => other,
        })?;
        settings.pipeline = Some(pipeline);
    }
    for (index, forward) in t.forward.iter().enumerate() {
        let field = |name: &str| format!("{path}.forward[{index}].{name}");
        let http = |url: &str, name: &str| -> Result<()> {
            if url.starts_with("http://") {
                Ok(())
            } else {
                Err(at.error(
                    forward.span(),
                    &field(name),
                    format!(
                        "{url:?} is not an http:// URL (https is not supported yet: send to a \
                         local collector or proxy)"
                    ),
                ))
            }
        };
        settings.forward.push(match forward.get_ref() {
            ForwardToml::Otlp { endpoint, headers } => {
                http(endpoint, "endpoint")?;
                ForwardSettings::Otlp {
                    endpoint: endpoint.clone(),
                    headers: headers.clone(),
                }
            }
            ForwardToml::Webhook {
                url,
                signing_key_env,
                headers,
            } => {
                http(url, "url")?;
                ForwardSettings::Webhook {
                    url: url.clone(),
                    signing_key_env: signing_key_env.clone(),
                    headers: headers.clone(),
                }
            }
            ForwardToml::File {
                dir,
                max_file_bytes,
            } => ForwardSettings::File {
                dir: super::backup::resolve(base, dir),
                max_file_bytes: max_file_bytes.unwrap_or(64 * 1024 * 1024),
            },
        });
    }
    Ok(settings)
}
